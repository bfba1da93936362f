"""Section ``preprocess``: the HD transform per image size and num_crops, against PIL's resize."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from PIL import Image

from .harness import QUESTION, Bench, Section
from .measure import ratio, repeat, size_text, stat, synthetic_image
from .tables import spread, table, times

if TYPE_CHECKING:
    from ..processing.processor import Processor

PREPROCESS_TARGET = 1.5
"""Target for preprocessing time / PIL resize time of the same image."""


def section_preprocess(bench: Bench) -> dict[str, Any]:
    """Per image size and num_crops: the HD transform against the PIL resize it contains.

    ``floor``: ``image.resize(size, BILINEAR)`` to the HD transform's size, the one step no
    preprocessing can skip. ``transform``: ``image_to_views`` (resize, pad, tiles, normalise,
    global view, only the views the image has): the image preprocessing proper. ``encode``:
    what a call pays for the image before model work on a feature-cache miss (``load_images``
    of the in-memory image, tokenising, the transform). ``fingerprint``:
    the content hash the feature cache keys on, paid once per image by the first model call.
    """
    processor = bench.processor()
    rows = []
    for size in bench.settings.preprocess_sizes:
        image = synthetic_image(*size, seed=bench.settings.seed)
        for crops in bench.settings.preprocess_crops:
            bench.log(f"preprocess {size_text(size)} num_crops={crops}")
            rows.append(_preprocess_row(bench, processor, image, crops))
    return {"target_ratio": PREPROCESS_TARGET, "rows": rows}


def _preprocess_row(bench: Bench, processor: Processor, image: Image.Image, crops: int) -> dict[str, Any]:
    from ..images import image_fingerprint, load_images
    from ..processing.hd_transform import _resized_landscape, crop_grid, image_to_views, image_tokens_for_size

    text = f"<|user|>\n<|image_1|>\n{QUESTION}<|end|>\n<|assistant|>\n"
    # The transform works on the landscape orientation; turning a portrait image is not part
    # of the floor.
    landscape = image if image.width >= image.height else image.transpose(Image.Transpose.TRANSPOSE)
    target = _resized_landscape(landscape.width, landscape.height, crops)
    clock = bench.clock

    def once() -> tuple[float, float, float, float]:
        floor, _ = clock.time(lambda: landscape.resize(target, Image.Resampling.BILINEAR))
        transform, _ = clock.time(
            lambda: image_to_views(image, crops, processor.image_mean, processor.image_std, pad=False)
        )
        encode, _ = clock.time(lambda: processor.encode(text, load_images([image]), crops).image_views(0))
        fingerprint, _ = clock.time(lambda: image_fingerprint(image))
        return floor, transform, encode, fingerprint

    runs = repeat(bench.settings.runs, once)
    floor, transform, encode, fingerprint = ([run[i] for run in runs] for i in range(4))
    rows, cols = crop_grid(image.width, image.height, crops)
    return {
        "image": size_text(image.size),
        "num_crops": crops,
        "resized_to": size_text(target),
        "crops": rows * cols,
        "image_tokens": image_tokens_for_size(image.width, image.height, crops),
        "floor_s": stat(floor, "s"),
        "transform_s": stat(transform, "s"),
        "encode_s": stat(encode, "s"),
        "fingerprint_s": stat(fingerprint, "s"),
        "transform_vs_floor": ratio(statistics.median(transform), statistics.median(floor)),
        "encode_vs_floor": ratio(statistics.median(encode), statistics.median(floor)),
    }


def _md_preprocess(body: dict[str, Any]) -> str:
    rows = [
        [
            r["image"],
            str(r["num_crops"]),
            f"{r['resized_to']} ({r['crops']} crops)",
            spread(r["floor_s"], 1000),
            spread(r["transform_s"], 1000),
            times(r["transform_vs_floor"]),
            spread(r["encode_s"], 1000),
            times(r["encode_vs_floor"]),
            spread(r["fingerprint_s"], 1000),
        ]
        for r in body["rows"]
    ]
    return (
        table(
            [
                "image",
                "num_crops",
                "resized to",
                "PIL resize floor ms",
                "HD transform ms",
                "transform / floor",
                "encode ms",
                "encode / floor",
                "fingerprint ms",
            ],
            rows,
        )
        + f"\n\nTarget: transform / floor <= {body['target_ratio']}."
    )


SECTION = Section("preprocess", "Image preprocessing (per image)", section_preprocess, _md_preprocess)
