"""Image inputs: one way to turn whatever the caller has into a fully loaded RGB ``PIL.Image``.

Every public entry point of the library that takes images goes through :func:`load_image`, so
that paths, URLs, bytes, data URIs, PIL images and numpy arrays behave the same everywhere, and
so that the safety limits of :class:`ImagePolicy` (pixel count, byte size, download time,
redirects, private addresses) are applied in exactly one place.

Importing this module stays cheap: numpy and requests are imported inside the functions that
need them, and torch is never imported here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import os
import re
import socket
import stat
import sys
import time
import urllib.parse
import warnings
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, TypeAlias, Union

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ImageError, ImageTooLargeError, OptionsError, Phi3VisionError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import requests

__all__ = [
    "DEFAULT_FORMATS",
    "ImageInput",
    "ImagePolicy",
    "describe_source",
    "image_fingerprint",
    "load_image",
    "load_images",
    "make_policy",
]


class _Readable(Protocol):
    """Anything with ``read()``: open files, ``io.BytesIO``, upload objects of web frameworks."""

    def read(self, size: int = -1, /) -> bytes: ...


if TYPE_CHECKING:
    ImageInput: TypeAlias = (
        str
        | os.PathLike[str]
        | bytes
        | bytearray
        | memoryview
        | _Readable
        | Image.Image
        | npt.NDArray[np.uint8]
    )
else:
    # At run time the alias must not import numpy (and must stay resolvable by
    # typing.get_type_hints), so the array member is spelled Any here.
    ImageInput: TypeAlias = Union[
        str, "os.PathLike[str]", bytes, bytearray, memoryview, _Readable, Image.Image, Any
    ]
"""What :func:`load_image` accepts: a path (``str`` or ``os.PathLike``), an ``http(s)`` URL, a
``data:image/...;base64,`` URI, encoded bytes (``bytes``/``bytearray``/``memoryview``), a binary
file object, a ``PIL.Image.Image``, or a ``uint8`` numpy array of shape HxW or HxWxC (C = 1, 3, 4).
"""

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

_CHUNK_SIZE = 64 * 1024
_MAX_DESCRIPTION = 160
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ACCEPTED_CONTENT_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
_URL_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(//)?")


class ImagePolicy(BaseModel):
    """Limits applied to every image input.

    The defaults suit local use (a person loading their own files and URLs). A service that
    passes user-supplied URLs or uploads along should at least set ``allow_private_urls=False``
    and ``allow_local_files=False``, so that a request cannot make it fetch from its own network
    or read its own disk.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pixels: int = Field(default=64_000_000, gt=0)
    """Largest width * height accepted, checked from the file header before any pixel data is
    decoded, so that a small file claiming a huge size (a decompression bomb) costs nothing."""

    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    """Largest encoded size accepted: a file on disk, a download, bytes or a data URI."""

    connect_timeout: float = Field(default=5.0, gt=0)
    """Seconds to wait for a TCP/TLS connection to a server."""

    read_timeout: float = Field(default=30.0, gt=0)
    """Seconds to wait for the next piece of data from a server."""

    total_timeout: float | None = Field(default=None, gt=0)
    """Wall-clock limit for one whole download, redirects included. ``None`` means
    ``connect_timeout + 2 * read_timeout``. Without it a server sending one byte per second
    would never trip ``read_timeout`` and could hold the caller forever."""

    max_redirects: int = Field(default=5, ge=0)
    """Redirects followed for one download; every target is checked like the first URL."""

    allowed_schemes: frozenset[Literal["http", "https"]] = frozenset({"http", "https"})
    """URL schemes that may be fetched. Only http and https exist: ``file:``, ``ftp:`` and the
    like are always refused, so a URL can never be a way to read local files."""

    allow_private_urls: bool = True
    """When False, refuse URLs whose host resolves to a private, loopback, link-local,
    reserved, multicast, unspecified or otherwise non-global address (checked for the first
    request and for every redirect target)."""

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

    @property
    def download_deadline(self) -> float:
        """Seconds one download (all hops and the body) may take in total."""
        if self.total_timeout is not None:
            return self.total_timeout
        return self.connect_timeout + 2 * self.read_timeout


_DEFAULT_POLICY = ImagePolicy()


def make_policy(**options: Any) -> ImagePolicy:
    """Build an :class:`ImagePolicy`, reporting bad values as :class:`OptionsError`.

    Plain ``ImagePolicy(...)`` raises pydantic's ``ValidationError``; library entry points that
    take policy options from users go through here so that callers only need to catch the
    library's own exceptions.
    """
    try:
        return ImagePolicy(**options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'policy'}: {error['msg']}"
            for error in exc.errors()
        )
        raise OptionsError(f"invalid image policy: {problems}") from exc


# --------------------------------------------------------------------------------------------
# Describing sources


def _shorten(text: str) -> str:
    """Keep messages readable when a source is a very long path or URL, and printable: a lone
    surrogate (``"\\ud800"``) is escaped, or printing or logging the message would fail."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= _MAX_DESCRIPTION:
        return text
    return text[:100] + "..." + text[-50:]


def _redacted_url(url: str) -> str:
    """The URL without credentials or query string: signed URLs carry secrets that must not end
    up in error messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return _shorten(_without_secrets(url.split("?", 1)[0]))
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    query = "?..." if parts.query else ""
    return _shorten(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query)


_QUERY = re.compile(r"\?[^\s'\"()]*")
_USERINFO = re.compile(r"//[^/\s'\"@]*@")


def _without_secrets(text: str) -> str:
    """``text`` with URL query strings and credentials cut out. For messages that quote a URL
    where it could not be parsed, and for requests' and urllib3's exception messages, which
    quote the URL as it was requested ("Max retries exceeded with url: /a.png?signature=...")."""
    return _USERINFO.sub("//", _QUERY.sub("?...", text))


def _numpy_array_type() -> type | None:
    """numpy's ndarray class if numpy is already imported. An array can only exist if numpy was
    imported, so there is no need to import it (slowly) just to test an input's type."""
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None) if numpy is not None else None


def _is_numpy_array(source: object) -> bool:
    array_type = _numpy_array_type()
    return array_type is not None and isinstance(source, array_type)


def _is_url_like(text: str) -> bool:
    """True for ``scheme://...`` and ``file:...``; Windows drive letters (``C:``) are paths."""
    match = _URL_LIKE.match(text)
    if match is None:
        return False
    return match.group(2) is not None or match.group(1).lower() == "file"


def describe_source(source: object) -> str:
    """A short, log-safe description of an image input, used in every error message."""
    if isinstance(source, str):
        if source[:5].lower() == "data:":
            header = source[5:].split(",", 1)[0]
            media_type = header.split(";", 1)[0] or "no media type"
            return f"data URI ({_shorten(media_type)}, {len(source)} characters)"
        if _is_url_like(source):
            return _redacted_url(source)
        return _shorten(source)
    if isinstance(source, os.PathLike):
        return _shorten(os.fsdecode(os.fspath(source)))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"bytes ({memoryview(source).nbytes} bytes)"
    if isinstance(source, Image.Image):
        return f"PIL image ({source.mode}, {source.width}x{source.height})"
    if _is_numpy_array(source):
        array: Any = source
        return f"numpy array of shape {tuple(array.shape)} and dtype {array.dtype}"
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return f"file object {_shorten(name)}" if isinstance(name, str) else "file object"
    return f"object of type {type(source).__name__}"


# --------------------------------------------------------------------------------------------
# Loading


class _Context:
    """What every step needs to report a failure: the message prefix naming the input (it
    differs between load_image and load_images) and the policy."""

    def __init__(self, prefix: str, policy: ImagePolicy) -> None:
        self.prefix = prefix
        self.policy = policy

    def fail(self, reason: str, error: type[ImageError] = ImageError) -> NoReturn:
        raise error(f"{self.prefix}: {reason}")

    def too_large(self, reason: str) -> NoReturn:
        self.fail(reason, ImageTooLargeError)

    def check_byte_count(self, count: int, what: str) -> None:
        if count > self.policy.max_bytes:
            self.too_large(f"{what} is {count} bytes, over the limit of max_bytes={self.policy.max_bytes}")


def load_image(
    source: ImageInput, policy: ImagePolicy | None = None, *, label: str | None = None
) -> Image.Image:
    """Load one image input as a new, fully decoded RGB image.

    EXIF orientation is applied and every pixel mode becomes RGB, so that the same picture gives
    the same pixels whichever way it was passed in. ``label`` replaces the automatic
    description of ``source`` in error messages. Raises :class:`ImageError` (or
    :class:`ImageTooLargeError` for a limit of ``policy``) naming the input and the reason.
    """
    description = label if label is not None else describe_source(source)
    context = _Context(f"image '{description}'", policy or _DEFAULT_POLICY)
    return _load(source, context)


def load_images(sources: Iterable[ImageInput], policy: ImagePolicy | None = None) -> list[Image.Image]:
    """Load several image inputs in order; a failure names the 1-based position of the input.

    The error message starts with ``image N (description)`` so that a user who passed ten
    images learns which one was wrong.
    """
    if isinstance(sources, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)) or (
        _is_numpy_array(sources)
    ):
        raise ImageError(
            f"load_images expects a list of images, got a single {describe_source(sources)}; "
            "use load_image or wrap it in a list"
        )
    try:
        iterator = iter(sources)
    except TypeError:
        raise ImageError(f"load_images expects a list of images, got {describe_source(sources)}") from None
    chosen_policy = policy or _DEFAULT_POLICY
    images = []
    for index, source in enumerate(iterator, start=1):
        context = _Context(f"image {index} ({describe_source(source)})", chosen_policy)
        images.append(_load(source, context))
    return images


def _load(source: object, context: _Context) -> Image.Image:
    """Dispatch on the kind of input; each branch ends in :func:`_finish`."""
    if isinstance(source, Image.Image):
        return _finish(source, context, owned=False)
    if _is_numpy_array(source):
        return _finish(_from_array(source, context), context)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        context.check_byte_count(len(data), "the data")
        return _decode(data, context)
    if isinstance(source, str):
        if source[:5].lower() == "data:":
            return _decode(_from_data_uri(source, context), context)
        if _is_url_like(source):
            return _decode(_download(source, context), context)
        return _decode(_read_path(source, context), context)
    if isinstance(source, os.PathLike):
        return _decode(_read_path(source, context), context)
    if hasattr(source, "read"):
        return _decode(_read_file_object(source, context), context)
    context.fail(
        f"unsupported input type {type(source).__name__}; expected a path, an http(s) URL, a data URI, "
        "bytes, a binary file object, a PIL image or a uint8 numpy array"
    )


def _read_path(path: str | os.PathLike[str], context: _Context) -> bytes:
    """Read a local file. Directories and special files are refused before opening them (a FIFO
    would block ``open`` and /dev/zero would never end), big files before reading them."""
    if not context.policy.allow_local_files:
        context.fail("reading local files is not allowed by this policy (allow_local_files=False)")
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        _raise_os_error(exc, context)
    if stat.S_ISDIR(info.st_mode):
        context.fail("is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        context.fail("is not a regular file")
    context.check_byte_count(info.st_size, "the file")
    try:
        with open(path, "rb") as file:
            data = file.read(context.policy.max_bytes + 1)
    except (OSError, ValueError) as exc:
        _raise_os_error(exc, context)
    context.check_byte_count(len(data), "the file")
    if not data:
        context.fail("the file is empty (0 bytes)")
    return data


def _raise_os_error(exc: OSError | ValueError, context: _Context) -> NoReturn:
    """Turn a failed stat/open/read into an ImageError with a short reason."""
    if isinstance(exc, FileNotFoundError):
        reason = "file not found"
    elif isinstance(exc, IsADirectoryError):
        reason = "is a directory, not an image file"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    elif isinstance(exc, OSError):
        reason = f"cannot read the file ({exc.strerror or exc})"
    else:  # ValueError: a path with an embedded NUL character
        reason = f"invalid path ({exc})"
    raise ImageError(f"{context.prefix}: {reason}") from exc


def _read_file_object(file: Any, context: _Context) -> bytes:
    """Read at most ``max_bytes + 1`` bytes from the current position; the caller keeps
    ownership of the file, so it is not closed here."""
    try:
        data = file.read(context.policy.max_bytes + 1)
    except Exception as exc:
        raise ImageError(f"{context.prefix}: cannot read the file object ({exc})") from exc
    if isinstance(data, str):
        context.fail("the file object is in text mode; open it in binary mode ('rb')")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        context.fail(f"the file object's read() returned {type(data).__name__}, not bytes")
    data = bytes(data)
    context.check_byte_count(len(data), "the file")
    if not data:
        context.fail("the file object is empty (0 bytes left to read)")
    return data


def _from_data_uri(uri: str, context: _Context) -> bytes:
    """Decode ``data:[<media type>][;base64],<data>``, refusing non-image media types."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        context.fail("malformed data URI: no ',' between the header and the data")
    params = [part.strip().lower() for part in header.split(";")]
    media_type = params[0]
    if media_type and not (media_type.startswith("image/") or media_type in _ACCEPTED_CONTENT_TYPES):
        context.fail(f"data URI has media type {media_type!r}, not an image type")
    if "base64" in params[1:]:
        compact = "".join(payload.split())
        # Three bytes per four characters: refuse before decoding a huge payload.
        context.check_byte_count(len(compact) * 3 // 4, "the data URI's data")
        try:
            data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"{context.prefix}: the data URI is not valid base64") from exc
    else:
        try:
            data = urllib.parse.unquote_to_bytes(payload)
        except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
            raise ImageError(
                f"{context.prefix}: the data URI's data is not valid text ({exc.reason})"
            ) from exc
    context.check_byte_count(len(data), "the data URI's data")
    if not data:
        context.fail("the data URI holds no data")
    return data


def _from_array(array: Any, context: _Context) -> Image.Image:
    """Wrap a uint8 HxW / HxWxC array. Other dtypes are refused rather than guessed: a float
    array may mean [0, 1] or [0, 255], and guessing wrong silently gives a wrong image."""
    import numpy as np

    if array.dtype != np.uint8:
        context.fail(f"numpy arrays must have dtype uint8, got {array.dtype}; convert it first")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        context.fail(f"numpy arrays must have shape HxW or HxWxC with C in (1, 3, 4), got {array.shape}")
    height, width = int(array.shape[0]), int(array.shape[1])
    if height == 0 or width == 0:
        context.fail(f"the array is empty (shape {array.shape})")
    _check_pixels(width, height, context)
    try:
        return Image.fromarray(np.ascontiguousarray(array))
    except Exception as exc:
        raise ImageError(f"{context.prefix}: cannot convert the array to an image ({exc})") from exc


def _check_pixels(width: int, height: int, context: _Context) -> None:
    if width * height > context.policy.max_pixels:
        context.too_large(
            f"{width}x{height} is {width * height} pixels, over the limit of "
            f"max_pixels={context.policy.max_pixels}"
        )


def _open_formats(policy: ImagePolicy) -> tuple[str, ...] | None:
    """The allowed formats that Pillow knows here. Pillow raises a bare KeyError for a name
    it has no plugin for, so unknown names (HEIF without pillow-heif) are dropped first."""
    if policy.allowed_formats is None:
        return None
    Image.init()
    return tuple(name for name in policy.allowed_formats if name in Image.OPEN)


def _decode(data: bytes, context: _Context) -> Image.Image:
    """Identify and decode encoded image bytes, refusing oversized images before decoding."""
    if not data:
        context.fail("no data (0 bytes)")
    # Pillow warns (DecompressionBombWarning) above Image.MAX_IMAGE_PIXELS. When the policy is at
    # most that strict the warning can only mean "over the limit", so it becomes an error; when
    # the policy allows more, the caller asked for big images and the warning is noise.
    # catch_warnings is process-wide and not thread-safe: under concurrent loads this one filter
    # may outlive the call, which only changes how Pillow's bomb warning is reported elsewhere.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    escalate = pillow_limit is None or context.policy.max_pixels <= pillow_limit
    with warnings.catch_warnings():
        warnings.simplefilter("error" if escalate else "ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=_open_formats(context.policy))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(
                f"{context.prefix}: the image is too large ({exc}); max_pixels={context.policy.max_pixels}"
            ) from exc
        except Image.UnidentifiedImageError as exc:
            raise ImageError(
                f"{context.prefix}: not a recognised image ({len(data)} bytes of unknown or unsupported "
                "format, or a corrupt header)"
            ) from exc
        except Exception as exc:
            raise ImageError(f"{context.prefix}: cannot open the image ({exc})") from exc
    with image:
        return _finish(image, context)


def _finish(image: Image.Image, context: _Context, owned: bool = True) -> Image.Image:
    """Check the size, decode the pixels, apply EXIF orientation and convert to RGB.

    Always returns a new image, never a caller's object (``owned=False``), so callers can
    modify the result without touching an image they passed in. An image we decoded ourselves
    (``owned=True``) is not copied when it needs no change: a photo of 12 megapixels takes tens
    of milliseconds to copy.
    """
    width, height = image.size
    if width < 1 or height < 1:
        context.fail(f"the image has no pixels ({width}x{height})")
    _check_pixels(width, height, context)
    try:
        image.load()
    except Phi3VisionError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{context.prefix}: the image is too large ({exc})") from exc
    except Exception as exc:
        # Truncated files, bad checksums and decoder errors all land here; their messages
        # ("image file is truncated", "broken data stream") are the useful part.
        raise ImageError(f"{context.prefix}: corrupt or truncated image data ({exc})") from exc
    try:
        upright = image.getexif().get(_EXIF_ORIENTATION, 1) in (1, None)
        oriented = image if upright else ImageOps.exif_transpose(image)
    except Exception:
        # Orientation is metadata: broken EXIF must not make the (intact) pixels unusable.
        oriented = image
    if oriented is image and not owned:
        oriented = image.copy()
    try:
        return _to_rgb(oriented)
    except Phi3VisionError:
        raise
    except Exception as exc:
        raise ImageError(
            f"{context.prefix}: cannot convert pixel mode {image.mode!r} to RGB ({exc})"
        ) from exc


_EXIF_ORIENTATION = 0x0112


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any pixel mode to 8-bit RGB.

    Alpha is dropped with a plain ``convert("RGB")`` (no compositing onto white), exactly like
    the reference processor, so model inputs match it for RGBA images. 16/32-bit grey is
    scaled from 0..65535 down to 0..255; Pillow's own conversion clips instead, turning most
    of a 16-bit image white.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        import numpy as np

        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        eight_bit = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    # Transparency is dropped either way; removing it first avoids Pillow's warning about
    # palette transparency that "should be converted to RGBA".
    image.info.pop("transparency", None)
    return image.convert("RGB")


# --------------------------------------------------------------------------------------------
# Downloads


def _resolve(host: str, port: int) -> list[str]:
    """Addresses ``host`` resolves to (a separate function so tests can substitute it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _is_public(address: str) -> bool:
    """True only for globally routable unicast addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def _check_url(url: str, context: _Context, hop: str) -> None:
    """Refuse a URL (first request or redirect target) that the policy does not allow."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ImageError(f"{context.prefix}: {hop}malformed URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in context.policy.allowed_schemes:
        allowed = ", ".join(sorted(context.policy.allowed_schemes)) or "none"
        context.fail(f"{hop}URL scheme {scheme!r} is not allowed (allowed: {allowed})")
    host = parts.hostname
    if not host:
        context.fail(f"{hop}URL has no host name")
    if context.policy.allow_private_urls:
        return
    try:
        addresses = _resolve(host, port or (443 if scheme == "https" else 80))
    except (OSError, UnicodeError) as exc:
        raise ImageError(f"{context.prefix}: {hop}cannot resolve host {host!r} ({exc})") from exc
    for address in addresses:
        try:
            public = _is_public(address)
        except ValueError:
            public = False
        if not public:
            context.fail(
                f"{hop}host {host!r} resolves to the non-public address {address}; private, loopback "
                "and link-local addresses are refused by this policy (allow_private_urls=False)"
            )


def _download(url: str, context: _Context) -> bytes:
    """Fetch a URL with every limit of the policy; network errors become ImageError."""
    import requests
    import urllib3.exceptions

    deadline = time.monotonic() + context.policy.download_deadline
    try:
        with _session() as session:
            response = _follow_redirects(session, url, context, deadline)
            try:
                return _read_body(response, context, deadline)
            finally:
                response.close()
    except Phi3VisionError:
        raise
    except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise ImageError(
            f"{context.prefix}: download timeout (connect_timeout={context.policy.connect_timeout} s, "
            f"read_timeout={context.policy.read_timeout} s)"
        ) from exc
    except requests.ConnectionError as exc:
        raise ImageError(
            f"{context.prefix}: cannot connect to the server ({_without_secrets(str(exc))})"
        ) from exc
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise ImageError(f"{context.prefix}: download failed ({_without_secrets(str(exc))})") from exc


def _session() -> requests.Session:
    """A requests session that never follows redirects on its own (_follow_redirects does)."""
    import requests

    class _Session(requests.Session):
        def get_redirect_target(self, resp: requests.Response) -> str | None:
            # Even with allow_redirects=False, requests prepares ``Response.next`` for a
            # redirect and reads the redirect's whole body to do so, with no size limit and no
            # deadline. Reporting "no redirect" here stops that; the redirect is still seen
            # by _follow_redirects (``is_redirect``), which closes it unread.
            return None

    return _Session()


def _remaining(deadline: float, context: _Context) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        context.fail(
            f"download timeout: not finished within {context.policy.download_deadline:g} s (total_timeout)"
        )
    return left


def _follow_redirects(
    session: requests.Session, url: str, context: _Context, deadline: float
) -> requests.Response:
    """GET ``url``, following redirects by hand so that each target is checked against the
    policy (scheme, private addresses) before it is contacted; requests' own redirect handling
    would contact it first."""
    policy = context.policy
    headers = {
        "User-Agent": policy.user_agent,
        "Accept": "image/*, application/octet-stream;q=0.5",
        # Images are compressed already; asking for no transfer encoding keeps the byte limit
        # about what is actually decoded.
        "Accept-Encoding": "identity",
    }
    visited = {url}
    current = url
    for hop_number in range(policy.max_redirects + 1):
        hop = "" if hop_number == 0 else f"redirect {hop_number} to {_redacted_url(current)}: "
        _check_url(current, context, hop)
        left = _remaining(deadline, context)
        response = session.get(
            current,
            headers=headers,
            stream=True,
            allow_redirects=False,
            timeout=(min(policy.connect_timeout, left), min(policy.read_timeout, left)),
        )
        if not response.is_redirect:
            return _checked_response(response, context)
        location = response.headers["location"]
        response.close()
        current = urllib.parse.urljoin(current, location)
        if current in visited:
            context.fail(f"redirect loop: {_redacted_url(current)} was already visited")
        visited.add(current)
    context.fail(f"too many redirects (more than max_redirects={policy.max_redirects})")


def _checked_response(response: requests.Response, context: _Context) -> requests.Response:
    """Refuse error statuses, non-image content types and announced oversized bodies before
    reading any of the body."""
    try:
        if not 200 <= response.status_code < 300:
            context.fail(f"HTTP error {response.status_code} {response.reason or ''}".rstrip())
        content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type and not (
            content_type.startswith("image/") or content_type in _ACCEPTED_CONTENT_TYPES
        ):
            context.fail(f"the server sent Content-Type {content_type!r}, not an image")
        length = response.headers.get("Content-Length", "").strip()
        if length.isdigit():
            context.check_byte_count(int(length), "the download (Content-Length)")
    except BaseException:
        response.close()
        raise
    return response


def _read_body(response: requests.Response, context: _Context, deadline: float) -> bytes:
    """Stream the body, stopping as soon as it exceeds ``max_bytes`` or the deadline passes.

    ``read1`` returns whatever arrived instead of waiting for a full chunk, so a server that
    trickles bytes is still caught by the deadline. Compressed bodies (sent despite
    ``Accept-Encoding: identity``) are inflated here with a bounded output size, so that a
    small gzip bomb cannot expand in memory.
    """
    limit = context.policy.max_bytes
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    decompressor = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        decompressor = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
    elif encoding not in ("", "identity"):
        context.fail(f"unsupported Content-Encoding {encoding!r}")
    raw = response.raw
    read = getattr(raw, "read1", None) or raw.read
    body = bytearray()
    while True:
        _remaining(deadline, context)
        chunk = read(_CHUNK_SIZE, decode_content=False)
        if not chunk:
            break
        if decompressor is not None:
            try:
                chunk = decompressor.decompress(chunk, limit - len(body) + 1)
            except zlib.error as exc:
                raise ImageError(f"{context.prefix}: corrupt {encoding} response ({exc})") from exc
        body += chunk
        if len(body) > limit:
            context.too_large(f"the download is over the limit of max_bytes={limit}; stopped reading")
    if decompressor is not None:
        try:
            body += decompressor.flush()
        except zlib.error as exc:
            raise ImageError(f"{context.prefix}: corrupt {encoding} response ({exc})") from exc
        context.check_byte_count(len(body), "the download")
    if not body:
        context.fail("the server sent an empty body")
    return bytes(body)


# --------------------------------------------------------------------------------------------
# Fingerprints


def image_fingerprint(image: Image.Image) -> str:
    """A stable sha256 hex digest of an image's mode, size and pixels (plus palette for palette
    modes), for caching image features: equal pixels give equal keys across processes and
    runs, unlike ``id()`` or ``hash()``. Hashed in strips of rows so a large image is not
    copied into one big bytes object."""
    if not isinstance(image, Image.Image):
        raise ImageError(f"image_fingerprint expects a PIL image, got {describe_source(image)}")
    digest = hashlib.sha256()
    width, height = image.size
    digest.update(f"phi3vision-image-v1\0{image.mode}\0{width}x{height}\0".encode())
    if image.mode in ("P", "PA"):
        digest.update(bytes(image.getpalette() or []))
    rows_per_strip = max(1, (4 * 1024 * 1024) // max(1, width * 4))
    try:
        for top in range(0, height, rows_per_strip):
            strip = image.crop((0, top, width, min(height, top + rows_per_strip)))
            digest.update(strip.tobytes())
    except Exception as exc:
        raise ImageError(f"image_fingerprint: cannot read the image's pixels ({exc})") from exc
    return digest.hexdigest()
