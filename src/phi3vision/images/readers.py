"""Turning local inputs into encoded bytes (files, file objects, data URIs) or into a PIL image
(numpy arrays), each with the policy's limits applied before anything big is read."""

from __future__ import annotations

import base64
import binascii
import os
import stat
import urllib.parse
from typing import Any, NoReturn

from PIL import Image

from ..errors import ImageError
from .context import Context

ACCEPTED_CONTENT_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
"""Media types taken as "some image" besides ``image/*`` (in data URIs and downloads)."""


def read_path(path: str | os.PathLike[str], context: Context) -> bytes:
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


def _raise_os_error(exc: OSError | ValueError, context: Context) -> NoReturn:
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


def read_file_object(file: Any, context: Context) -> bytes:
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


def from_data_uri(uri: str, context: Context) -> bytes:
    """Decode ``data:[<media type>][;base64],<data>``, refusing non-image media types."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        context.fail("malformed data URI: no ',' between the header and the data")
    params = [part.strip().lower() for part in header.split(";")]
    media_type = params[0]
    if media_type and not (media_type.startswith("image/") or media_type in ACCEPTED_CONTENT_TYPES):
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


def from_array(array: Any, context: Context) -> Image.Image:
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
    context.check_pixels(width, height)
    try:
        return Image.fromarray(np.ascontiguousarray(array))
    except Exception as exc:
        raise ImageError(f"{context.prefix}: cannot convert the array to an image ({exc})") from exc


def from_bytes(source: bytes | bytearray | memoryview, context: Context) -> bytes:
    """Copy encoded bytes; a released ``memoryview`` cannot be read."""
    try:
        data = bytes(source)
    except (ValueError, TypeError) as exc:
        raise ImageError(f"{context.prefix}: cannot read the bytes ({exc})") from exc
    context.check_byte_count(len(data), "the data")
    return data
