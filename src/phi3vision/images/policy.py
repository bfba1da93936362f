"""``ImagePolicy``: the limits applied to every image input, and the checks of a policy value."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import OptionsError

DEFAULT_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "WEBP",
    "GIF",
    "MPO",
    "BMP",
    "TIFF",
    "AVIF",
    "HEIF",
    "JPEG2000",
    "ICO",
    "PPM",
    "QOI",
    "TGA",
)
"""Formats decoded by default. Exotic Pillow plugins are left out on purpose: EPS, for one,
runs Ghostscript on untrusted data. Formats not installed here (HEIF needs pillow-heif) are
skipped. Set ``ImagePolicy(allowed_formats=None)`` to accept everything Pillow can open."""


class ImagePolicy(BaseModel):
    """Limits applied to every image input.

    The defaults suit local use (a person loading their own files and URLs). A service that
    passes user-supplied URLs or uploads along should at least set ``allow_private_urls=False``
    and ``allow_local_files=False``, so that a request cannot make it fetch from its own network
    or read its own disk.

    Types are strict, as for every options object of the library: ``True`` is not a number
    and ``"no"`` is not a boolean.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_pixels: int = Field(default=64_000_000, gt=0)
    """Largest width * height accepted, checked from the file header before any pixel data is
    decoded, so that a small file claiming a huge size (a decompression bomb) costs nothing."""

    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    """Largest encoded size accepted: a file on disk, a download, bytes or a data URI."""

    connect_timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    """Seconds to wait for a TCP/TLS connection to a server."""

    read_timeout: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    """Seconds to wait for the next piece of data from a server."""

    total_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Wall-clock limit for one whole download, redirects included. ``None`` means
    ``connect_timeout + 2 * read_timeout``. Without it a server sending one byte per second
    would never trip ``read_timeout`` and could hold the caller forever."""

    max_redirects: int = Field(default=5, ge=0, le=100)
    """Redirects followed for one download; every target is checked like the first URL."""

    allowed_schemes: frozenset[Literal["http", "https"]] = frozenset({"http", "https"})
    """URL schemes that may be fetched. Only http and https exist: ``file:``, ``ftp:`` and the
    like are always refused, so a URL can never be a way to read local files."""

    allow_private_urls: bool = True
    """When False, refuse URLs whose host resolves to a private, loopback, link-local,
    reserved, multicast, unspecified or otherwise non-global address: checked for the first
    request and every redirect target before contacting it, and again for the address each
    connection actually reaches. Proxies from the environment are not used then."""

    allow_local_files: bool = True
    """When False, refuse path inputs (``str`` paths and ``os.PathLike``)."""

    allowed_formats: tuple[str, ...] | None = DEFAULT_FORMATS
    """Pillow format names that may be decoded; ``None`` for all of Pillow's formats."""

    user_agent: str = "phi3vision"
    """``User-Agent`` header sent with downloads."""

    @field_validator("allowed_schemes", mode="before")
    @classmethod
    def _lowercase_schemes(cls, value: Any) -> Any:
        """Accept ``"HTTPS"`` as well as ``"https"``: schemes are case-insensitive in URLs."""
        if isinstance(value, (list, tuple, set, frozenset)):
            return frozenset(v.lower() if isinstance(v, str) else v for v in value)
        return value

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _uppercase_formats(cls, value: Any) -> Any:
        """Pillow's format registry is keyed by upper-case names."""
        if isinstance(value, (list, tuple, set, frozenset)):
            return tuple(v.upper() if isinstance(v, str) else v for v in value)
        return value

    @field_validator("user_agent")
    @classmethod
    def _one_header_line(cls, value: str) -> str:
        """A header value with a line break would let the agent string add headers."""
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value) or not value.isascii():
            raise ValueError("user_agent must be printable ASCII without line breaks")
        return value

    @property
    def download_deadline(self) -> float:
        """Seconds one download (all hops and the body) may take in total."""
        if self.total_timeout is not None:
            return self.total_timeout
        return self.connect_timeout + 2 * self.read_timeout


DEFAULT_POLICY = ImagePolicy()


def make_policy(**options: Any) -> ImagePolicy:
    """Build an :class:`ImagePolicy`, reporting bad values as :class:`OptionsError`.

    Plain ``ImagePolicy(...)`` raises pydantic's ``ValidationError``; library entry points that
    take policy options from users go through here so that callers only need to catch the
    library's own exceptions.
    """
    from ..options import options_error

    try:
        return ImagePolicy(**options)
    except ValidationError as exc:
        raise options_error(exc, "image policy") from exc


def check_policy(value: object) -> ImagePolicy | None:
    """``value`` if it is an :class:`ImagePolicy` or ``None`` (the default policy), else an
    :class:`OptionsError`: a model must refuse a wrong ``image_policy=`` when it is built,
    not fail on every later call."""
    if value is None or isinstance(value, ImagePolicy):
        return value
    raise OptionsError(
        f"image_policy must be a phi3vision.ImagePolicy or None, got {type(value).__name__}; "
        "build one with ImagePolicy(...) or phi3vision.images.make_policy(...)"
    )
