"""Encoded bytes -> a fully decoded, upright RGB ``PIL.Image``, within the policy's limits.

Every failure of a decoder, whatever Pillow or its C libraries raise (``ValueError``,
``struct.error``, ``OSError``, an ``IndexError`` from an odd header, a size with three
dimensions from an IM file), becomes an :class:`ImageError` naming the input.

Pillow's ``Image.open`` warns (``DecompressionBombWarning``) for images over its own global
``MAX_IMAGE_PIXELS``. Silencing that per call would need ``warnings.catch_warnings()``, which
is process-wide, not thread-safe, and resets Python's de-duplication of every other warning
(so a warning meant to be shown once would repeat on every image). Instead, images are opened
here through Pillow's format registry (``Image.OPEN``, the same plugins ``Image.open`` tries),
and the policy's ``max_pixels``, checked from the header before any pixel data is decoded, is
the one limit.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageOps

from ..errors import ImageError, ImageTooLargeError, Phi3VisionError
from .context import Context
from .policy import ImagePolicy

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_EXIF_ORIENTATION = 0x0112


def _open_formats(policy: ImagePolicy) -> tuple[str, ...]:
    """The allowed formats that Pillow knows here (all of them for ``allowed_formats=None``).
    Names with no plugin here (HEIF without pillow-heif) are dropped."""
    Image.init()
    if policy.allowed_formats is None:
        return tuple(Image.ID)
    return tuple(name for name in policy.allowed_formats if name in Image.OPEN)


def _identify(data: bytes, context: Context) -> Image.Image:
    """Open ``data`` with the first allowed plugin that accepts it, reading its header only.

    The same loop as ``Image.open``: a plugin's ``accept`` looks at the first bytes, and a
    plugin that fails on the header (``SyntaxError`` is Pillow's "not my format") lets the
    next one try. Pillow's global bomb check is not run: the policy's limit is checked next.
    """
    prefix = data[:16]
    failures: list[str] = []
    for name in _open_formats(context.policy):
        factory, accept = Image.OPEN[name]
        try:
            accepted = not accept or accept(prefix)
            if isinstance(accepted, str) or not accepted:  # a str: "support not installed"
                continue
            return factory(io.BytesIO(data), "")
        except Phi3VisionError:
            raise
        except Exception as exc:
            failures.append(f"{name}: {exc}")
    detail = f"; {failures[0]}" if failures else ""
    context.fail(
        f"not a recognised image ({len(data)} bytes of unknown or unsupported format, or a corrupt "
        f"header{detail})"
    )


def _checked_size(image: Image.Image, context: Context) -> tuple[int, int]:
    """The image's size as two positive ints. Decoders report what the file says: an IM file
    can claim three dimensions, others zero or negative sizes."""
    size: Any = image.size
    if not (
        isinstance(size, tuple)
        and len(size) == 2
        and all(isinstance(side, int) and not isinstance(side, bool) for side in size)
    ):
        context.fail(f"the decoder reports an invalid image size {size!r:.60}")
    width, height = size
    if width < 1 or height < 1:
        context.fail(f"the image has no pixels ({width}x{height})")
    return width, height


def decode(data: bytes, context: Context) -> Image.Image:
    """Identify and decode encoded image bytes, refusing oversized images before decoding."""
    if not data:
        context.fail("no data (0 bytes)")
    return finish(_identify(data, context), context)


def finish(image: Image.Image, context: Context, owned: bool = True) -> Image.Image:
    """Check the size, decode the pixels, apply EXIF orientation and convert to RGB.

    Always returns a new image, never a caller's object (``owned=False``), so callers can
    modify the result without touching an image they passed in. An image we decoded ourselves
    (``owned=True``) is not copied when it needs no change: a photo of 12 megapixels takes tens
    of milliseconds to copy.
    """
    width, height = _checked_size(image, context)
    context.check_pixels(width, height)
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
        rgb = _to_rgb(oriented)
    except Phi3VisionError:
        raise
    except Exception as exc:
        raise ImageError(
            f"{context.prefix}: cannot convert pixel mode {image.mode!r} to RGB ({exc})"
        ) from exc
    _checked_size(rgb, context)
    return rgb


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
