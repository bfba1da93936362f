"""Images for the testing-kit tests, made on the fly (no torch here: the fake tests must not
import it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


def make_photo(
    width: int = 640, height: int = 480, colour: tuple[int, int, int] = (200, 30, 30)
) -> Image.Image:
    """A small RGB image with a gradient, so different sizes and colours give different pixels."""
    image = Image.new("RGB", (width, height), colour)
    for x in range(0, width, 8):
        image.putpixel((x, height // 2), (x % 256, 255 - x % 256, 128))
    return image


@pytest.fixture
def photo() -> Image.Image:
    return make_photo()


@pytest.fixture
def photo_file(tmp_path: Path, photo: Image.Image) -> Path:
    path = tmp_path / "photo.png"
    photo.save(path)
    return path
