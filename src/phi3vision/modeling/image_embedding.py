"""Image features for Phi-3-vision: CLIP patch features, 2x2 merge, separators, projection.

For one image of ``rows x cols`` crops (C = CLIP width, 1024 for ViT-L):

- CLIP runs on the global view and every crop; the features are the patch tokens (no CLS) of the
  second-to-last layer: ``(1 + rows*cols, 576, C)``.
- Each 24x24 patch grid is merged 2x2 into a 12x12 grid of ``4C`` features.
- The crops are laid out as one ``12*rows x 12*cols`` grid; every grid row (of the crops' grid
  and of the global view's 12x12 grid) gets the learned ``sub_GN`` separator appended.
- The sequence is crops, ``glb_GN``, global view (``sub_glb``, as in the released checkpoints).
- A two-layer MLP (Linear, GELU, Linear) projects ``4C`` to the language model's width.

Pure torch: no I/O, no device policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..processing.hd_transform import CROP_SIZE, PATCHES_PER_SIDE
from .config import ImageEmbeddingConfig


def merge_2x2(features: torch.Tensor) -> torch.Tensor:
    """``(n, 576, C)`` patch features -> ``(n, 12, 12, 4C)``, each 2x2 block side by side."""
    n, _, width = features.shape
    half = PATCHES_PER_SIDE // 2
    return (
        features.reshape(n, half, 2, half, 2, width)  # (n, 12, 2, 12, 2, C)
        .permute(0, 1, 3, 2, 4, 5)  # (n, 12, 12, 2, 2, C)
        .reshape(n, half, half, 4 * width)
    )


class ImageEmbedding(nn.Module):
    """CLIP vision tower plus the Phi-3-vision HD glue; parameter names follow the checkpoint."""

    def __init__(self, config: ImageEmbeddingConfig, vision_config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionModel(vision_config)
        merged = config.image_dim_out * 4
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, merged))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, merged))
        self.img_projection = nn.Sequential(
            nn.Linear(merged, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )

    def patch_features(self, views: torch.Tensor) -> torch.Tensor:
        """``(n_views, 3, 336, 336)`` -> ``(n_views, 576, C)`` patch features of the chosen layer."""
        output = self.vision_tower(pixel_values=views, output_hidden_states=True)
        return output.hidden_states[self.config.layer_idx][:, 1:]  # drop the CLS token

    def hd_sequence(self, features: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """One image's ``(1 + rows*cols, 576, C)`` features -> ``(num_image_tokens, 4C)``."""
        half = PATCHES_PER_SIDE // 2
        merged = merge_2x2(features)  # (1 + rows*cols, 12, 12, 4C)
        width = merged.shape[-1]
        sub_gn = self.sub_GN.reshape(1, 1, width)

        glb = merged[0]  # (12, 12, 4C)
        glb = torch.cat([glb, sub_gn.expand(half, 1, width)], dim=1).reshape(-1, width)  # (156, 4C)

        crops = merged[1 : 1 + rows * cols]  # (rows*cols, 12, 12, 4C)
        grid = (
            crops.reshape(rows, cols, half, half, width)
            .permute(0, 2, 1, 3, 4)  # (rows, 12, cols, 12, 4C)
            .reshape(rows * half, cols * half, width)
        )
        grid = torch.cat([grid, sub_gn.expand(rows * half, 1, width)], dim=1).reshape(-1, width)

        glb_gn = self.glb_GN.reshape(1, width)
        if self.config.hd_transform_order == "sub_glb":
            return torch.cat([grid, glb_gn, glb], dim=0)
        return torch.cat([glb, glb_gn, grid], dim=0)

    def forward(self, views: Sequence[torch.Tensor], image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """Projected features of each image: a list of ``(num_image_tokens_i, hidden)``.

        ``views[i]`` holds image i's global view and crops, ``(>= 1 + rows*cols, 3, 336, 336)``
        (zero padding after them is ignored), and ``image_sizes`` the HD ``(height, width)`` of
        each image. All images' real views go through CLIP in one batch.
        """
        grids = [(int(h) // CROP_SIZE, int(w) // CROP_SIZE) for h, w in image_sizes.tolist()]
        counts = [1 + rows * cols for rows, cols in grids]
        used = [image_views[:count] for image_views, count in zip(views, counts, strict=True)]
        batch = used[0] if len(used) == 1 else torch.cat(used)  # (sum views, 3, 336, 336)
        features = self.patch_features(batch.to(dtype=self.glb_GN.dtype))  # (sum views, 576, C)
        sequences = [
            self.hd_sequence(per_image, rows, cols)
            for per_image, (rows, cols) in zip(features.split(counts), grids, strict=True)
        ]
        return list(self.project(sequences))

    def project(self, sequences: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        lengths = [len(s) for s in sequences]
        projected = self.img_projection(torch.cat(list(sequences)))  # (sum tokens, hidden)
        return projected.split(lengths)
