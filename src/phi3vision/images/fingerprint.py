"""Stable content fingerprints of images, for caching image features."""

from __future__ import annotations

import hashlib

from PIL import Image

from ..errors import ImageError
from .sources import describe_source


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
