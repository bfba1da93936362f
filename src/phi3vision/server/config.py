"""The server's settings: every limit a client could otherwise push too far, in one object."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..images import ImagePolicy
from ..limits import RequestLimits


class ServerSettings(BaseModel):
    """What ``phi3vision serve`` was started with (each field is a command-line option)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_name: str = Field(min_length=1, description="The id clients send as 'model' and /v1/models lists")
    api_key: str | None = Field(None, description="When set, every /v1 request needs 'Bearer <key>'")
    max_tokens: int = Field(
        1024, ge=1, description="Cap on max_tokens; also the value when a request omits it"
    )
    max_batch_size: int = Field(8, ge=1, description="Requests generated together in one batch")
    batch_window_s: float = Field(
        0.01, ge=0, le=10, description="How long the first request of a batch waits for others to join"
    )
    batch_max_wait_s: float = Field(
        0.25,
        ge=0,
        le=10,
        description="How long it may wait, beyond the window, for requests still being read",
    )
    max_queue: int = Field(64, ge=1, description="Requests waiting for the model; more are refused with 503")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest request body (images included)")
    max_images: int = Field(8, ge=1, description="Images in one request, all messages together")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Prompt length, image tokens included")
    max_pixels: int = Field(20_000_000, ge=1, description="Largest width * height of one image")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest encoded image (download)")
    allow_private_urls: bool = Field(
        False, description="Fetch image URLs on private, loopback and link-local addresses"
    )
    shutdown_timeout_s: int = Field(
        60, gt=0, description="On SIGTERM, how long requests in flight may take to finish"
    )

    def image_policy(self) -> ImagePolicy:
        """How the server reads images on behalf of clients: never a local file, private
        addresses only when allowed, within the size limits."""
        return ImagePolicy(
            max_pixels=self.max_pixels,
            max_bytes=self.max_image_bytes,
            allow_private_urls=self.allow_private_urls,
            allow_local_files=False,
        )

    def request_limits(self) -> RequestLimits:
        return RequestLimits(max_images=self.max_images, max_prompt_tokens=self.max_prompt_tokens)
