"""Per-request limits, checked after the images are read and before any model work.

Pixel and byte limits of each image live in ``ImagePolicy`` (phi3vision.images); these are
the limits of one prompt as a whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from .errors import ContextLengthError, OptionsError, PromptError

if TYPE_CHECKING:
    from .images import ImagePolicy


class RequestLimits(BaseModel):
    """What one prompt may ask for. ``None`` means no limit beyond the model's context.
    Types are strict: ``True`` and ``"4"`` are not numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_images: int = Field(32, ge=1, description="Images in one prompt")
    max_image_tokens: int | None = Field(
        None, ge=1, description="Prompt positions all images of one prompt may take together"
    )
    max_prompt_tokens: int | None = Field(None, ge=1, description="Prompt length, images included")

    def check_images(self, count: int) -> None:
        if count > self.max_images:
            raise PromptError(
                f"the prompt has {count} images but at most {self.max_images} are allowed; send fewer "
                "images per prompt or raise RequestLimits(max_images=...)"
            )

    def check_tokens(self, prompt_tokens: int, image_tokens: int) -> None:
        if self.max_image_tokens is not None and image_tokens > self.max_image_tokens:
            raise ContextLengthError(
                f"the images take {image_tokens} prompt tokens but at most {self.max_image_tokens} are "
                "allowed; use a lower num_crops or fewer images, or raise RequestLimits(max_image_tokens=...)"
            )
        if self.max_prompt_tokens is not None and prompt_tokens > self.max_prompt_tokens:
            raise ContextLengthError(
                f"the prompt takes {prompt_tokens} tokens but at most {self.max_prompt_tokens} are "
                "allowed; shorten it, use a lower num_crops or fewer images, or raise "
                "RequestLimits(max_prompt_tokens=...)"
            )


MAX_FEATURE_CACHE_SIZE = 1_000_000
"""Most entries a feature cache may be asked to keep (each holds one image's features)."""


def check_limits(value: object) -> RequestLimits | None:
    """``value`` if it is a :class:`RequestLimits` or ``None`` (no limits beyond the defaults),
    else an :class:`OptionsError`: a model refuses a wrong ``limits=`` when it is built."""
    if value is None or isinstance(value, RequestLimits):
        return value
    raise OptionsError(
        f"limits must be a phi3vision.RequestLimits or None, got {type(value).__name__}; "
        "build one with RequestLimits(max_images=..., ...)"
    )


def check_cache_size(value: object, name: str = "feature_cache_size") -> int:
    """A cache size: an ``int`` from 0 (off) to :data:`MAX_FEATURE_CACHE_SIZE`; ``True`` and
    ``"3"`` are refused with :class:`OptionsError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FEATURE_CACHE_SIZE:
        raise OptionsError(f"{name} must be an int from 0 to {MAX_FEATURE_CACHE_SIZE}, got {value!r:.60}")
    return value


def check_model_options(
    image_policy: object = None, limits: object = None, feature_cache_size: object = 0
) -> tuple[ImagePolicy | None, RequestLimits | None, int]:
    """The options every model takes, checked when the model is built (before any loading),
    so that a wrong type is an :class:`OptionsError` at once instead of a bare
    ``AttributeError`` on every later call."""
    from .images import check_policy

    return check_policy(image_policy), check_limits(limits), check_cache_size(feature_cache_size)
