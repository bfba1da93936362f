"""Shared strategies and checks of the property tests."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from phi3vision.errors import Phi3VisionError

T = TypeVar("T")

ANY_CHAR = st.characters(codec=None, exclude_categories=())
"""Every code point, lone surrogates (``"\\ud800"``, no UTF-8 form) included; hypothesis
leaves those out of ``st.text()`` by default."""

ANY_TEXT = st.text(ANY_CHAR, max_size=300)

SURROGATE = st.characters(categories=["Cs"])


def outcome(
    expected: type[Phi3VisionError], function: Callable[..., T], *args: Any, **kwargs: Any
) -> T | Phi3VisionError:
    """``function(*args, **kwargs)``, or the ``expected`` library error it raised.

    Any other exception propagates and fails the test. A library error must carry a message
    that says something and that can be printed: UTF-8 encodable, so no lone surrogate from
    the input leaks into it unescaped.
    """
    try:
        return function(*args, **kwargs)
    except expected as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} without a message"
        message.encode("utf-8")  # raises UnicodeEncodeError for an unprintable message
        return exc


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """An image of random pixels in ``mode``, so that encoded files carry real pixel data."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, size=(height, width), dtype=np.uint16))
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}
    if mode in channels:
        count = channels[mode]
        data = rng.integers(0, 256, size=(height, width, count), dtype=np.uint8)
        return Image.frombytes(mode, (width, height), data.tobytes())
    grey = Image.fromarray(rng.integers(0, 256, size=(height, width), dtype=np.uint8))
    if mode == "P":
        return grey.convert("RGB").quantize(colors=16)
    return grey.convert(mode)  # "1"


FORMAT_MODES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PNG", ("RGB", "RGBA", "L", "LA", "P", "1", "I;16")),
    ("JPEG", ("RGB", "L", "CMYK")),
    ("GIF", ("P", "L")),
    ("BMP", ("RGB", "L", "P", "1")),
    ("WEBP", ("RGB", "RGBA")),
    ("TIFF", ("RGB", "RGBA", "L", "CMYK", "1", "I;16")),
    ("PPM", ("RGB", "L", "1")),
)
LOSSLESS = frozenset({"PNG", "BMP", "TIFF", "PPM"})


@st.composite
def encoded_images(draw: st.DrawFn, max_side: int = 48) -> tuple[bytes, Image.Image, str]:
    """``(file bytes, the image that was saved, format)`` for a random valid image file."""
    fmt, modes = draw(st.sampled_from(FORMAT_MODES))
    mode = draw(st.sampled_from(modes))
    width = draw(st.integers(1, max_side))
    height = draw(st.integers(1, max_side))
    image = random_image(mode, width, height, draw(st.integers(0, 2**32 - 1)))
    params: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    return encode(image, fmt, **params), image, fmt
