"""What an image input is: one classifier (:func:`source_kind`) used by the loader, the CLI and
error messages, so that "is this a URL or a path?" has one answer everywhere; and log-safe
descriptions of inputs (URLs without credentials or query strings)."""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, Union

from PIL import Image

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class Readable(Protocol):
    """Anything with ``read()``: open files, ``io.BytesIO``, upload objects of web frameworks."""

    def read(self, size: int = -1, /) -> bytes: ...


if TYPE_CHECKING:
    ImageInput: TypeAlias = (
        str
        | os.PathLike[str]
        | bytes
        | bytearray
        | memoryview
        | Readable
        | Image.Image
        | npt.NDArray[np.uint8]
    )
else:
    # At run time the alias must not import numpy (and must stay resolvable by
    # typing.get_type_hints), so the array member is spelled Any here.
    ImageInput: TypeAlias = Union[
        str, "os.PathLike[str]", bytes, bytearray, memoryview, Readable, Image.Image, Any
    ]
"""What :func:`load_image` accepts: a path (``str`` or ``os.PathLike``), an ``http(s)`` URL, a
``data:image/...;base64,`` URI, encoded bytes (``bytes``/``bytearray``/``memoryview``), a binary
file object, a ``PIL.Image.Image``, or a ``uint8`` numpy array of shape HxW or HxWxC (C = 1, 3, 4).
"""

SourceKind = Literal["pil", "array", "bytes", "data_uri", "url", "path", "file", "unsupported"]
"""The kinds of image input. ``"url"`` is any ``scheme://`` string (and ``file:``), whether or
not its scheme may be fetched: the downloader refuses the others with a clear reason."""

_MAX_DESCRIPTION = 160
_URL_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(//)?")


def _numpy_array_type() -> type | None:
    """numpy's ndarray class if numpy is already imported. An array can only exist if numpy was
    imported, so there is no need to import it (slowly) just to test an input's type."""
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None) if numpy is not None else None


def is_numpy_array(source: object) -> bool:
    array_type = _numpy_array_type()
    return array_type is not None and isinstance(source, array_type)


def _is_url_like(text: str) -> bool:
    """True for ``scheme://...`` and ``file:...``; Windows drive letters (``C:``) are paths."""
    match = _URL_LIKE.match(text)
    if match is None:
        return False
    return match.group(2) is not None or match.group(1).lower() == "file"


def source_kind(source: object) -> SourceKind:
    """What kind of image input ``source`` is. The one place that decides it."""
    if isinstance(source, Image.Image):
        return "pil"
    if is_numpy_array(source):
        return "array"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(source, str):
        if source[:5].lower() == "data:":
            return "data_uri"
        return "url" if _is_url_like(source) else "path"
    if isinstance(source, os.PathLike):
        return "path"
    if hasattr(source, "read"):
        return "file"
    return "unsupported"


def is_remote(source: object) -> bool:
    """True for URLs and data URIs: strings that name no local file and must never be joined
    to a folder or checked on disk."""
    return source_kind(source) in ("url", "data_uri")


def shorten(text: str) -> str:
    """Keep messages readable when a source is a very long path or URL, and printable: a lone
    surrogate (``"\\ud800"``) is escaped, or printing or logging the message would fail."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= _MAX_DESCRIPTION:
        return text
    return text[:100] + "..." + text[-50:]


_QUERY = re.compile(r"\?[^\s'\"()]*")
_USERINFO = re.compile(r"//[^/\s'\"@]*@")


def without_secrets(text: str) -> str:
    """``text`` with URL query strings and credentials cut out. For messages that quote a URL
    where it could not be parsed, and for requests' and urllib3's exception messages, which
    quote the URL as it was requested ("Max retries exceeded with url: /a.png?signature=...")."""
    return _USERINFO.sub("//", _QUERY.sub("?...", text))


def redacted_url(url: str) -> str:
    """The URL without credentials or query string: signed URLs carry secrets that must not end
    up in error messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return shorten(without_secrets(url.split("?", 1)[0]))
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    query = "?..." if parts.query else ""
    return shorten(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query)


def describe_source(source: object) -> str:
    """A short, log-safe description of an image input, used in every error message."""
    kind = source_kind(source)
    if kind == "data_uri":
        text = str(source)
        media_type = text[5:].split(",", 1)[0].split(";", 1)[0] or "no media type"
        return f"data URI ({shorten(media_type)}, {len(text)} characters)"
    if kind == "url":
        return redacted_url(str(source))
    if kind == "path":
        path: Any = source
        return shorten(os.fsdecode(os.fspath(path)))
    if kind == "bytes":
        return f"bytes ({memoryview(source).nbytes} bytes)"  # type: ignore[arg-type]
    if kind == "pil":
        image: Any = source
        return f"PIL image ({image.mode}, {image.width}x{image.height})"
    if kind == "array":
        array: Any = source
        return f"numpy array of shape {tuple(array.shape)} and dtype {array.dtype}"
    if kind == "file":
        name = getattr(source, "name", None)
        return f"file object {shorten(name)}" if isinstance(name, str) else "file object"
    return f"object of type {type(source).__name__}"
