"""The Phi-3-vision "HD transform": one image becomes a global view plus up to ``num_crops``
336x336 crops, normalised for CLIP.

Steps, exactly as the reference processor does them (parity is tested against golden vectors):

1. Turn portrait images on their side (PIL ``TRANSPOSE``) so that width >= height.
2. Pick the largest ``scale`` (crops per row) with ``scale * ceil(scale / ratio) <= num_crops``,
   resize (PIL bilinear) to width ``scale * 336`` keeping the aspect ratio, and pad the height
   with white up to a multiple of 336, centred vertically.
3. Transpose back, convert to a float tensor in [0, 1], normalise with the CLIP mean and std.
4. The global view is that normalised HD image resized to 336x336 (torch bicubic); the crops
   are its 336x336 tiles in row-major order. Global view first, then crops, zero-padded up to
   ``num_crops + 1`` views so that images of different shapes stack into one tensor.

Only PIL and torch tensor ops are used (no torchvision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from ..errors import ImageError, OptionsError

if TYPE_CHECKING:
    import torch

CROP_SIZE = 336
"""Side of one crop, in pixels: the CLIP ViT-L/14-336 input size."""

PATCHES_PER_SIDE = CROP_SIZE // 14
"""CLIP patch grid of one crop: 24x24 patches of 14 pixels."""

MERGED_PER_SIDE = PATCHES_PER_SIDE // 2
"""After the 2x2 merge of patch features: a 12x12 grid of tokens per crop."""

TOKENS_PER_CROP = MERGED_PER_SIDE * MERGED_PER_SIDE
"""144 image tokens per crop (and for the global view)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resized_landscape(long_side: int, short_side: int, num_crops: int) -> tuple[int, int]:
    """Size ``(long, short)`` the landscape-oriented image is resized to before padding.

    The long side gets ``scale`` crops: the largest scale whose crop count
    ``scale * ceil(scale / ratio)`` stays within ``num_crops``. The short side keeps the aspect
    ratio (at least one pixel, for extreme strips where the reference would fail).
    """
    if num_crops < 1:
        raise OptionsError(f"num_crops must be at least 1, got {num_crops}")
    if long_side <= 0 or short_side <= 0:
        raise ImageError(f"image sides must be positive, got {long_side} and {short_side}")
    ratio = long_side / short_side
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_long = int(scale * CROP_SIZE)
    return new_long, max(1, int(new_long / ratio))


def crop_grid(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """``(rows, cols)`` of 336x336 crops the HD transform gives a ``width`` x ``height`` image."""
    new_long, new_short = _resized_landscape(max(width, height), min(width, height), num_crops)
    long_crops, short_crops = new_long // CROP_SIZE, math.ceil(new_short / CROP_SIZE)
    return (short_crops, long_crops) if width >= height else (long_crops, short_crops)


def hd_image_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of the padded HD image: multiples of 336."""
    rows, cols = crop_grid(width, height, num_crops)
    return rows * CROP_SIZE, cols * CROP_SIZE


def num_image_tokens(hd_height: int, hd_width: int) -> int:
    """Number of prompt tokens an image takes, from its padded HD size in pixels.

    With ``rows x cols`` crops of 12x12 merged tokens each:

    - the crops form a ``12*rows`` x ``12*cols`` token grid, and each of its ``12*rows`` rows
      ends with a learned row separator: ``12*rows * (12*cols + 1)`` tokens;
    - one global-view separator token;
    - the global view: 12 rows of 12 tokens, each row with its separator: ``12 * 13``.

    Which is the reference's ``(rows*cols + 1) * 144 + 1 + (rows + 1) * 12``.
    """
    rows, cols = hd_height // CROP_SIZE, hd_width // CROP_SIZE
    return (rows * cols + 1) * TOKENS_PER_CROP + 1 + (rows + 1) * MERGED_PER_SIDE


def image_tokens_for_size(width: int, height: int, num_crops: int) -> int:
    """Prompt tokens for an image of ``width`` x ``height`` pixels at ``num_crops``."""
    return num_image_tokens(*hd_image_size(width, height, num_crops))


def hd_transform(image: Image.Image, num_crops: int) -> Image.Image:
    """Resize and white-pad an RGB image to its HD size (multiples of 336 on both sides)."""
    transposed = image.width < image.height
    if transposed:
        # The reference works on landscape images; transposing (rather than resizing to the
        # swapped size) keeps PIL's two resampling passes in the same order, bit for bit.
        image = image.transpose(Image.Transpose.TRANSPOSE)
    new_width, new_height = _resized_landscape(image.width, image.height, num_crops)
    resized = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    padded_height = math.ceil(new_height / CROP_SIZE) * CROP_SIZE
    top = (padded_height - new_height) // 2
    padded = Image.new("RGB", (new_width, padded_height), (255, 255, 255))
    padded.paste(resized, (0, top))
    if transposed:
        padded = padded.transpose(Image.Transpose.TRANSPOSE)
    return padded


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way the reference processor does (``convert("RGB")``)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def image_to_views(
    image: Image.Image,
    num_crops: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    *,
    pad: bool = True,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pixel values of one image, ``(num_crops + 1, 3, 336, 336)``, and its HD ``(height, width)``.

    With ``pad=False`` only the views the image really has come back, ``(1 + rows*cols, ...)``:
    the zero padding exists only to stack images of different shapes.
    """
    import numpy as np
    import torch

    hd = hd_transform(to_rgb(image), num_crops)
    pixels = torch.from_numpy(np.array(hd, dtype=np.uint8))  # (H, W, 3) uint8
    height, width = pixels.shape[:2]
    rows, cols = height // CROP_SIZE, width // CROP_SIZE
    # (x / 255 - mean) / std as one multiply-add: the same values to within float32 rounding,
    # in two passes over the floats instead of four.
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = -torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std_t

    views = torch.empty((num_crops if pad else rows * cols) + 1, 3, CROP_SIZE, CROP_SIZE, dtype=torch.float32)
    crops = views[1 : 1 + rows * cols].view(rows, cols, 3, CROP_SIZE, CROP_SIZE)
    # Tiles are cut from the uint8 image while converting it, straight into their place.
    crops.copy_(pixels.view(rows, CROP_SIZE, cols, CROP_SIZE, 3).permute(0, 2, 4, 1, 3))
    crops.mul_(scale).add_(shift)  # (rows, cols, 3, 336, 336), row-major tiles
    views[1 + rows * cols :].zero_()

    # The global view: the normalised HD image resized to 336x336 (bicubic). Bicubic weights
    # sum to one, so resizing the raw values and normalising afterwards is the same map.
    raw = pixels.permute(2, 0, 1).unsqueeze(0).to(torch.float32)  # (1, 3, H, W)
    global_view = torch.nn.functional.interpolate(
        raw, size=(CROP_SIZE, CROP_SIZE), mode="bicubic", align_corners=False
    )  # (1, 3, 336, 336)
    views[0] = global_view[0] * scale + shift
    return views, (height, width)
