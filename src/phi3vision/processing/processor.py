"""Prompt text + loaded images -> model inputs (``Encoding``), and token counts without tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import OptionsError
from .hd_transform import CLIP_MEAN, CLIP_STD, image_tokens_for_size, images_to_pixel_values
from .tokenization import PromptTokenizer

if TYPE_CHECKING:
    import torch

MAX_NUM_CROPS = 64
"""Upper bound accepted for num_crops; the checkpoints are trained with up to 16."""


@dataclass
class Encoding:
    """Model inputs for one prompt, as the reference processor makes them.

    ``input_ids`` is ``(1, L)``; image N's positions hold ``-N``. ``pixel_values`` is
    ``(n_images, num_crops + 1, 3, 336, 336)`` and ``image_sizes`` the HD ``(height, width)``
    of each image, ``(n_images, 2)``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    image_sizes: torch.Tensor
    num_crops: int
    image_token_counts: list[int] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list, repr=False)
    image_keys: list[str] | None = field(default=None, repr=False)
    """Content keys of the images, filled in when a cache needs them."""

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_image_tokens(self) -> int:
        return sum(self.image_token_counts)


def check_num_crops(num_crops: Any) -> int:
    if isinstance(num_crops, bool) or not isinstance(num_crops, int) or not 1 <= num_crops <= MAX_NUM_CROPS:
        raise OptionsError(f"num_crops must be an int from 1 to {MAX_NUM_CROPS}, got {num_crops!r}")
    return num_crops


class Processor:
    """The checkpoint's tokenizer and image settings (``preprocessor_config.json``)."""

    def __init__(
        self,
        tokenizer: PromptTokenizer,
        num_crops: int = 16,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ) -> None:
        self.tokenizer = tokenizer
        self.num_crops = check_num_crops(num_crops)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)

    def image_token_counts(self, images: Sequence[Image.Image], num_crops: int | None = None) -> list[int]:
        crops = self.num_crops if num_crops is None else check_num_crops(num_crops)
        return [image_tokens_for_size(image.width, image.height, crops) for image in images]

    def token_ids(
        self, prompt: str, images: Sequence[Image.Image], num_crops: int | None = None
    ) -> list[int]:
        """Token ids (images as runs of ``-N``), with no pixel work: what ``count_tokens`` uses."""
        return self.tokenizer.encode(prompt, self.image_token_counts(images, num_crops))

    def encode(self, prompt: str, images: Sequence[Image.Image], num_crops: int | None = None) -> Encoding:
        import torch

        crops = self.num_crops if num_crops is None else check_num_crops(num_crops)
        counts = self.image_token_counts(images, crops)
        ids = torch.tensor([self.tokenizer.encode(prompt, counts)], dtype=torch.long)  # (1, L)
        pixel_values, image_sizes = images_to_pixel_values(images, crops, self.image_mean, self.image_std)
        return Encoding(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            num_crops=crops,
            image_token_counts=counts,
            images=list(images),
        )
