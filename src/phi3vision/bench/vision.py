"""Section ``vision``: the vision encoder alone on one image's views."""

from __future__ import annotations

import statistics
from typing import Any

from .harness import Bench, Section
from .measure import repeat, stat
from .tables import num, spread, table


def section_vision(bench: Bench) -> dict[str, Any]:
    """The vision encoder alone: CLIP on the image's views, 2x2 merge, separators, projection."""
    import torch

    from ..processing.hd_transform import CROP_SIZE

    vm = bench.model()
    encoding = vm.encode(bench.prompt())
    pixel_values = encoding.pixel_values.to(vm.device)
    height, width = (int(side) for side in encoding.image_sizes[0])
    views = 1 + (height // CROP_SIZE) * (width // CROP_SIZE)

    def once() -> float:
        with torch.inference_mode():
            seconds, _ = bench.clock.time(
                lambda: vm.module.image_features(pixel_values, encoding.image_sizes)
            )
        return seconds

    seconds = repeat(bench.settings.runs, once)
    return {
        **bench.workload(),
        "views": views,
        "image_tokens": encoding.num_image_tokens,
        "seconds": stat(seconds, "s"),
        "views_per_s": views / statistics.median(seconds),
    }


def _md_vision(body: dict[str, Any]) -> str:
    return table(
        ["image", "num_crops", "views", "image tokens", "vision encoder ms", "views/s"],
        [
            [
                body["image"],
                str(body["num_crops"]),
                str(body["views"]),
                str(body["image_tokens"]),
                spread(body["seconds"], 1000),
                num(body["views_per_s"]),
            ]
        ],
    )


SECTION = Section("vision", "Vision encoder (one image)", section_vision, _md_vision)
