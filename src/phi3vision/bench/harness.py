"""What every section shares: the settings of a run, the model sizes, and ``Bench``, which
holds the default model and the results of the sections run so far."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .measure import Clock, RssMeter, size_text, synthetic_image

if TYPE_CHECKING:
    from ..model import VisionModel
    from ..processing.processor import Processor
    from ..prompt import Prompt

MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {},  # tiny_checkpoint's defaults: hidden 64, 2 layers; CLIP width 64, 2 layers
    "mid": {
        "hidden_size": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "intermediate_size": 1024,
        "vision_hidden_size": 384,
        "vision_layers": 4,
        "vision_heads": 6,
        "vision_intermediate_size": 768,
    },
    "wide": {  # the real language-model width, 2 layers, a tiny vision tower (the quant section)
        "hidden_size": 3072,
        "num_hidden_layers": 2,
        "num_attention_heads": 32,
        "intermediate_size": 8192,
    },
    "full": {  # tests/reference/phi-3-vision-128k-instruct/config.json and CLIP ViT-L/14-336
        "hidden_size": 3072,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "intermediate_size": 8192,
        "vision_hidden_size": 1024,
        "vision_layers": 24,
        "vision_heads": 16,
        "vision_intermediate_size": 4096,
    },
}
"""Random-weight model sizes. ``mid`` is small enough for a 2-core CPU to run each call in
about a second while keeping the real shapes' proportions (vocabulary, 4x MLP ratio of CLIP)."""


DEFAULT_NUM_CROPS = {"tiny": 4, "mid": 4, "wide": 4, "full": 16}
"""num_crops of the model sections for each size; a real checkpoint (``--model``) uses 16."""


QUESTION = "Describe this image in detail."


@dataclass
class Settings:
    checkpoint: Path
    device: str
    dtype: str
    attn: str
    runs: int
    max_new_tokens: int
    num_crops: int
    image_size: tuple[int, int]
    batch_sizes: list[int]
    preprocess_sizes: list[tuple[int, int]]
    preprocess_crops: list[int]
    threads: int | None
    seed: int


@dataclass
class Bench:
    """The state shared by the sections: settings, the default model (loaded once, on first
    use) and the memory meter."""

    settings: Settings
    meter: RssMeter
    log: Callable[[str], None]
    _model: VisionModel | None = None
    _processor: Processor | None = None
    results: dict[str, Any] = field(default_factory=dict)
    """Each finished section's figures, by name (compile compares itself with decode)."""
    probes: list[dict[str, Any]] | None = None
    """The fresh-process memory probes, shared by the memory and loading sections."""

    @property
    def loaded(self) -> VisionModel | None:
        return self._model

    @property
    def clock(self) -> Clock:
        return Clock(self.settings.device)

    def load(self, **options: Any) -> VisionModel:
        from ..model import VisionModel

        s = self.settings
        return VisionModel.from_pretrained(
            s.checkpoint,
            device=s.device,
            dtype=s.dtype,
            attn_implementation=s.attn,
            num_crops=s.num_crops,
            **options,
        )

    def model(self) -> VisionModel:
        """The default model: caches on (as users get it), ``compile=False``."""
        if self._model is None:
            self.log("loading the model")
            self._model = self.load()
        return self._model

    def close_model(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None
            gc.collect()

    def processor(self) -> Processor:
        """The checkpoint's processor without its weights: preprocessing needs no model."""
        if self._processor is None:
            from ..loading import open_checkpoint
            from ..processing.hd_transform import CLIP_MEAN, CLIP_STD
            from ..processing.processor import Processor
            from ..processing.tokenization import PromptTokenizer

            checkpoint = open_checkpoint(self.settings.checkpoint)
            pre = checkpoint.preprocessor
            self._processor = Processor(
                PromptTokenizer.from_file(checkpoint.tokenizer_file),
                num_crops=self.settings.num_crops,
                image_mean=pre.get("image_mean", CLIP_MEAN),
                image_std=pre.get("image_std", CLIP_STD),
            )
        return self._processor

    def image(self, seed_offset: int = 0) -> Image.Image:
        width, height = self.settings.image_size
        return synthetic_image(width, height, self.settings.seed + seed_offset)

    def prompt(self, seed_offset: int = 0) -> Prompt:
        from ..prompt import Prompt

        return Prompt().user(QUESTION, images=[self.image(seed_offset)])

    def workload(self) -> dict[str, Any]:
        return {"image": size_text(self.settings.image_size), "num_crops": self.settings.num_crops}


@dataclass(frozen=True)
class Section:
    """One section of the report: its ``name`` (``--sections``, the JSON key), the ``title``
    of its markdown table, ``measure`` (the figures, as a JSON-able dict; raise to report a
    failure, the other sections still run) and ``render`` (those figures as markdown)."""

    name: str
    title: str
    measure: Callable[[Bench], dict[str, Any]]
    render: Callable[[dict[str, Any]], str]
