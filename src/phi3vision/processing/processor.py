"""Prompt text + loaded images -> model inputs (``Encoding``), and token counts without tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import OptionsError
from .hd_transform import (
    CLIP_MEAN,
    CLIP_STD,
    CROP_SIZE,
    hd_image_size,
    image_to_views,
    num_image_tokens,
)
from .tokenization import PromptTokenizer

if TYPE_CHECKING:
    import torch

MAX_NUM_CROPS = 64
"""Upper bound accepted for num_crops; the checkpoints are trained with up to 16."""


@dataclass
class Encoding:
    """Model inputs for one prompt, as the reference processor makes them.

    ``input_ids`` is ``(1, L)``; image N's positions hold ``-N``. ``image_sizes`` is the HD
    ``(height, width)`` of each image, ``(n_images, 2)``. ``pixel_values``,
    ``(n_images, num_crops + 1, 3, 336, 336)``, is made on first use: a model that already has an
    image's features (from its cache) never needs its pixels.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_sizes: torch.Tensor
    num_crops: int
    image_token_counts: list[int] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list, repr=False)
    image_keys: list[str] | None = field(default=None, repr=False)
    """Content keys of the images, filled in when a cache needs them."""
    image_mean: tuple[float, ...] = field(default=CLIP_MEAN, repr=False)
    image_std: tuple[float, ...] = field(default=CLIP_STD, repr=False)
    _views: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_image_tokens(self) -> int:
        """Positions holding image features: a repeated placeholder counts at each place."""
        return int((self.input_ids < 0).sum())

    def image_views(self, index: int) -> torch.Tensor:
        """The views image ``index`` (0-based) really has: ``(1 + rows*cols, 3, 336, 336)``."""
        views = self._views.get(index)
        if views is None:
            views, _ = image_to_views(
                self.images[index], self.num_crops, self.image_mean, self.image_std, pad=False
            )
            self._views[index] = views
        return views

    @property
    def pixel_values(self) -> torch.Tensor:
        """All images' views, zero-padded to ``num_crops + 1`` and stacked (the reference's layout)."""
        import torch

        padded = torch.zeros(len(self.images), self.num_crops + 1, 3, CROP_SIZE, CROP_SIZE)
        for index in range(len(self.images)):
            views = self.image_views(index)
            padded[index, : views.shape[0]] = views
        return padded


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
        return [num_image_tokens(*hd_image_size(image.width, image.height, crops)) for image in images]

    def token_ids(
        self, prompt: str, images: Sequence[Image.Image], num_crops: int | None = None
    ) -> list[int]:
        """Token ids (images as runs of ``-N``), with no pixel work: what ``count_tokens`` uses."""
        return self.tokenizer.encode(prompt, self.image_token_counts(images, num_crops))

    def encode(self, prompt: str, images: Sequence[Image.Image], num_crops: int | None = None) -> Encoding:
        """Token ids and image sizes now; pixel values when first asked for."""
        import torch

        crops = self.num_crops if num_crops is None else check_num_crops(num_crops)
        sizes = [hd_image_size(image.width, image.height, crops) for image in images]
        counts = [num_image_tokens(*size) for size in sizes]
        ids = torch.tensor([self.tokenizer.encode(prompt, counts)], dtype=torch.long)  # (1, L)
        return Encoding(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            image_sizes=torch.tensor(sizes, dtype=torch.long).reshape(len(images), 2),
            num_crops=crops,
            image_token_counts=counts,
            images=list(images),
            image_mean=self.image_mean,
            image_std=self.image_std,
        )
