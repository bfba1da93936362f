"""Property tests of the HD transform's geometry: crop grids, token counts and view tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from phi3vision.errors import ImageError, OptionsError, Phi3VisionError
from phi3vision.processing.hd_transform import (
    CLIP_MEAN,
    CLIP_STD,
    CROP_SIZE,
    crop_grid,
    hd_image_size,
    hd_transform,
    image_to_views,
    image_tokens_for_size,
)

from .helpers import random_image

SIDES = st.integers(1, 5000)
NUM_CROPS = st.integers(1, 16)


def documented_grid(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """The rule of the module docstring, in exact integer arithmetic: the long side gets the
    largest ``scale`` with ``scale * ceil(scale * short / long) <= num_crops`` crops, the short
    side as many as its resized length ``floor(scale * 336 * short / long)`` (at least 1) needs."""
    long_side, short_side = max(width, height), min(width, height)
    scale = 1
    while (scale + 1) * -(-(scale + 1) * short_side // long_side) <= num_crops:
        scale += 1
    resized_short = max(1, scale * CROP_SIZE * short_side // long_side)
    short_crops = -(-resized_short // CROP_SIZE)
    return (short_crops, scale) if width >= height else (scale, short_crops)


def formula_tokens(rows: int, cols: int) -> int:
    """Reference token count: ``(rows*cols + 1) * 144 + 1 + (rows + 1) * 12``."""
    return (rows * cols + 1) * 144 + 1 + (rows + 1) * 12


@settings(max_examples=300)
@given(width=SIDES, height=SIDES, num_crops=NUM_CROPS)
@example(width=1, height=1, num_crops=1)
@example(width=5000, height=1, num_crops=16)
@example(width=1, height=5000, num_crops=16)
@example(width=15, height=13, num_crops=16)
@example(width=336, height=336, num_crops=4)
@example(width=1344, height=336, num_crops=4)
def test_crop_grid_fits_num_crops_and_matches_the_documented_rule(
    width: int, height: int, num_crops: int
) -> None:
    rows, cols = crop_grid(width, height, num_crops)
    assert rows >= 1 and cols >= 1
    assert rows * cols <= num_crops
    assert (rows, cols) == documented_grid(width, height, num_crops)
    assert crop_grid(height, width, num_crops) == (cols, rows)  # a portrait is a turned landscape
    assert hd_image_size(width, height, num_crops) == (rows * CROP_SIZE, cols * CROP_SIZE)
    assert image_tokens_for_size(width, height, num_crops) == formula_tokens(rows, cols)


@settings(max_examples=300)
@given(width=SIDES, height=SIDES, num_crops=st.integers(1, 15))
def test_more_crops_never_give_a_smaller_grid(width: int, height: int, num_crops: int) -> None:
    rows, cols = crop_grid(width, height, num_crops)
    more_rows, more_cols = crop_grid(width, height, num_crops + 1)
    assert more_rows * more_cols >= rows * cols
    assert image_tokens_for_size(width, height, num_crops + 1) >= image_tokens_for_size(
        width, height, num_crops
    )


@settings(max_examples=25)
@given(
    width=st.integers(1, 400),
    height=st.integers(1, 400),
    num_crops=NUM_CROPS,
    seed=st.integers(0, 2**32 - 1),
)
@example(width=1, height=1, num_crops=1, seed=0)
@example(width=400, height=1, num_crops=16, seed=0)
@example(width=1, height=400, num_crops=3, seed=0)
@example(width=336, height=336, num_crops=1, seed=0)
def test_image_to_views_agrees_with_crop_grid(width: int, height: int, num_crops: int, seed: int) -> None:
    image = random_image("RGB", width, height, seed)
    views, hd_size = image_to_views(image, num_crops)
    rows, cols = crop_grid(width, height, num_crops)
    assert tuple(views.shape) == (num_crops + 1, 3, CROP_SIZE, CROP_SIZE)
    assert views.dtype == torch.float32
    assert hd_size == hd_image_size(width, height, num_crops) == (rows * CROP_SIZE, cols * CROP_SIZE)
    # Global view and crops hold normalised pixels in [(0 - mean) / std, (1 - mean) / std] ...
    used = views[: 1 + rows * cols]
    low = torch.tensor([(0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]).view(1, 3, 1, 1)
    high = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]).view(1, 3, 1, 1)
    assert bool(used.isfinite().all())
    assert bool((used[1:] >= low - 1e-5).all() and (used[1:] <= high + 1e-5).all())
    # ... the crops are the HD image's 336x336 tiles in row-major order ...
    hd = torch.from_numpy(np.asarray(hd_transform(image, num_crops), dtype=np.float32) / 255).permute(2, 0, 1)
    normalised = (hd - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        tile = normalised[:, row * CROP_SIZE : (row + 1) * CROP_SIZE, col * CROP_SIZE : (col + 1) * CROP_SIZE]
        assert torch.allclose(views[1 + index], tile, atol=1e-5)
    # ... and padding views (up to num_crops + 1) are zero.
    assert not bool(views[1 + rows * cols :].any())


@given(mode=st.sampled_from(["L", "RGBA", "P", "1", "CMYK", "I;16"]), width=st.integers(1, 60))
def test_image_to_views_takes_any_mode(mode: str, width: int) -> None:
    views, hd_size = image_to_views(random_image(mode, width, 7, seed=width), 2)
    assert tuple(views.shape) == (3, 3, CROP_SIZE, CROP_SIZE)
    assert hd_size == hd_image_size(width, 7, 2)


@given(
    width=st.integers(-(2**40), 5000),
    height=st.integers(-(2**40), 5000),
    num_crops=st.integers(-(2**40), 16),
)
@example(width=0, height=5, num_crops=4)
@example(width=5, height=5, num_crops=0)
@example(width=-1, height=-1, num_crops=-1)
def test_bad_sizes_and_num_crops_are_library_errors(width: int, height: int, num_crops: int) -> None:
    for function in (crop_grid, hd_image_size, image_tokens_for_size):
        try:
            result = function(width, height, num_crops)
        except (ImageError, OptionsError) as exc:
            assert isinstance(exc, Phi3VisionError) and isinstance(exc, ValueError)
            assert width < 1 or height < 1 or num_crops < 1
        else:
            assert width >= 1 and height >= 1 and num_crops >= 1
            assert result


def test_image_to_views_refuses_num_crops_below_one() -> None:
    with pytest.raises(OptionsError, match="num_crops"):
        image_to_views(Image.new("RGB", (4, 4)), 0)
