"""``python -m phi3vision.bench``: a reproducible performance benchmark.

It measures, on one machine in one run, where the time and memory of a Phi-3-vision call go:
image preprocessing (against the PIL resize it cannot avoid), the vision encoder, prefill and
time to first token, decoding at batch 1 (default and ``compile=True``), batch throughput, a
chat's second turn with and without reuse of the first turn's work, peak memory, and the
memory needed to load the weights. Every figure is the median of ``--runs`` runs after one
warm-up run, with min and max; every ratio compares figures measured in the same run, so that
a busy or throttled machine cannot make one side of a comparison look better than the other.

The model is a checkpoint (``--model``) or random weights of a named size (``--size``), written
with ``tiny_checkpoint`` into a temporary directory: random weights run exactly the real code at
the real cost per token, only the answers are noise. Output: markdown tables on stdout, then the
whole result as one JSON line (and, with ``--json PATH``, as a file). Progress goes to stderr.

See docs/performance.md for what each figure means and the numbers it produced.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

if TYPE_CHECKING:
    from .model import VisionModel
    from .processing.processor import Processor
    from .prompt import Prompt

T = TypeVar("T")

SECTIONS = ("preprocess", "vision", "prefill", "decode", "batch", "chat", "memory", "compile", "loading")
"""Every section, in the order they run (compile loads its own model after the others are done
with the default one, so that two copies of the weights are never held at once)."""

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

DEFAULT_NUM_CROPS = {"tiny": 4, "mid": 4, "full": 16}
"""num_crops of the model sections for each size; a real checkpoint (``--model``) uses 16."""

DEFAULT_IMAGE_SIZES = "336x336,1024x768,1920x1080,4000x3000"
DEFAULT_CROPS = "1,4,16"
PREPROCESS_TARGET = 1.5
"""Target for preprocessing time / PIL resize time of the same image."""
LOADING_TARGET = 1.3
"""Target for the memory a load adds (peak RSS) / the weights' size at the loaded dtype."""

QUESTION = "Describe this image in detail."


# -- measuring --------------------------------------------------------------------------------


def stat(values: Sequence[float], unit: str) -> dict[str, Any]:
    """Median, min and max of some runs, with the raw values (for anyone re-analysing them)."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
        "unit": unit,
        "values": [float(v) for v in values],
    }


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def repeat(runs: int, once: Callable[[], T]) -> list[T]:
    """``runs`` results of ``once`` after one warm-up call whose result is dropped (first calls
    pay for lazy imports, allocator growth and kernel selection, which no later call repeats)."""
    once()
    return [once() for _ in range(runs)]


class Clock:
    """Wall-clock timing that waits for the device, so that queued GPU work is counted."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def time(self, work: Callable[[], T]) -> tuple[float, T]:
        self.sync()
        start = time.perf_counter()
        result = work()
        self.sync()
        return time.perf_counter() - start, result


def _status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (Linux), else None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return None


class RssMeter:
    """Resident memory of this process, now and at its peak.

    On Linux a process may reset its peak (VmHWM) by writing 5 to /proc/self/clear_refs, so each
    peak covers only the work after the reset; elsewhere the peak is the lifetime peak from
    getrusage, and ``method`` says so.
    """

    def __init__(self) -> None:
        self.process_peak = 0
        self.resettable = self.reset()
        self.method = (
            "VmHWM after a reset through /proc/self/clear_refs"
            if self.resettable
            else "getrusage ru_maxrss (lifetime peak of the process)"
        )

    @staticmethod
    def current() -> int:
        found = _status_bytes("VmRSS")
        if found is not None:
            return found
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except ImportError:
            return 0

    @staticmethod
    def peak() -> int:
        found = _status_bytes("VmHWM")
        if found is not None:
            return found
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        except ImportError:
            return 0
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes; else kB

    def reset(self) -> bool:
        self.process_peak = max(self.process_peak, self.peak())
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            return False
        return True

    def overall_peak(self) -> int:
        return max(self.process_peak, self.peak())


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic RGB image of random pixels. Resize and transform costs do not depend on
    the content; distinct seeds give distinct images, so no cache can answer for another."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be WIDTHxHEIGHT, got {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return size


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def parse_sections(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if name in chosen]


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# -- machine ----------------------------------------------------------------------------------


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers depend on. The load average shows how busy the machine was."""
    import torch
    import transformers

    from . import __version__

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "phi3vision": __version__,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model_name(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "cuda_version": torch.version.cuda,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import psutil

        info["memory_bytes"] = int(psutil.virtual_memory().total)
    except ImportError:
        info["memory_bytes"] = None
    return info


# -- the benchmark ----------------------------------------------------------------------------


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
        from .model import VisionModel

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
            from .loading import open_checkpoint
            from .processing.hd_transform import CLIP_MEAN, CLIP_STD
            from .processing.processor import Processor
            from .processing.tokenization import PromptTokenizer

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
        from .prompt import Prompt

        return Prompt().user(QUESTION, images=[self.image(seed_offset)])

    def workload(self) -> dict[str, Any]:
        return {"image": _size_text(self.settings.image_size), "num_crops": self.settings.num_crops}


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
            bench.log(f"preprocess {_size_text(size)} num_crops={crops}")
            rows.append(_preprocess_row(bench, processor, image, crops))
    return {"target_ratio": PREPROCESS_TARGET, "rows": rows}


def _preprocess_row(bench: Bench, processor: Processor, image: Image.Image, crops: int) -> dict[str, Any]:
    from .images import image_fingerprint, load_images
    from .processing.hd_transform import _resized_landscape, crop_grid, image_to_views, image_tokens_for_size

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
        "image": _size_text(image.size),
        "num_crops": crops,
        "resized_to": _size_text(target),
        "crops": rows * cols,
        "image_tokens": image_tokens_for_size(image.width, image.height, crops),
        "floor_s": stat(floor, "s"),
        "transform_s": stat(transform, "s"),
        "encode_s": stat(encode, "s"),
        "fingerprint_s": stat(fingerprint, "s"),
        "transform_vs_floor": ratio(statistics.median(transform), statistics.median(floor)),
        "encode_vs_floor": ratio(statistics.median(encode), statistics.median(floor)),
    }


def section_vision(bench: Bench) -> dict[str, Any]:
    """The vision encoder alone: CLIP on the image's views, 2x2 merge, separators, projection."""
    import torch

    from .processing.hd_transform import CROP_SIZE

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


def _generate_wall(bench: Bench, vm: VisionModel, prompt: Prompt, max_new_tokens: int) -> tuple[float, Any]:
    """Wall-clock seconds of one ``generate`` from a cold state (no cached features or prefix).
    With ``max_new_tokens=1`` that is the time to first token: the call returns as soon as the
    first token is on the host."""
    vm.clear_caches()
    return bench.clock.time(lambda: vm.generate(prompt, max_new_tokens=max_new_tokens, stop=[]))


def section_prefill(bench: Bench) -> dict[str, Any]:
    """Time to first token for one image: preprocessing, vision encoder, prefill, one token."""
    vm = bench.model()
    prompt = bench.prompt()
    runs = repeat(bench.settings.runs, lambda: _generate_wall(bench, vm, prompt, 1))
    first = runs[0][1]
    return {
        **bench.workload(),
        "prompt_tokens": first.usage.prompt_tokens,
        "image_tokens": first.usage.image_tokens,
        "time_to_first_token_s": stat([wall for wall, _ in runs], "s"),
        "preprocess_s": stat([r.timings.preprocess_s for _, r in runs], "s"),
        "reported_time_to_first_token_s": stat([r.timings.time_to_first_token_s for _, r in runs], "s"),
    }


def _decode_runs(bench: Bench, vm: VisionModel, prompt: Prompt, warmed_up: bool = False) -> dict[str, Any]:
    """Decode speed at batch 1, two ways from the same runs.

    ``tokens_per_s``: ``(n - 1) / decode_s`` of each call, where the call times its own decode
    from the first token on the host to the last. ``wall_check_tokens_per_s``: ``(n - 1)`` over
    the wall-clock difference between an ``n``-token call and a 1-token call of the same run,
    which depends on nothing the library reports (a cross-check of the first).
    """
    n = bench.settings.max_new_tokens

    def once() -> tuple[float, float, Any]:
        wall_n, result = _generate_wall(bench, vm, prompt, n)
        wall_1, _ = _generate_wall(bench, vm, prompt, 1)
        return wall_n, wall_1, result

    runs = [once() for _ in range(bench.settings.runs)] if warmed_up else repeat(bench.settings.runs, once)
    tokens = [r.usage.completion_tokens for _, _, r in runs]
    speeds = [
        (t - 1) / r.timings.decode_s
        for t, (_, _, r) in zip(tokens, runs, strict=True)
        if r.timings.decode_s > 0
    ]
    checks = [(n - 1) / (wall_n - wall_1) for wall_n, wall_1, _ in runs if wall_n > wall_1]
    return {
        "max_new_tokens": n,
        "completion_tokens": min(tokens),
        "prompt_tokens": runs[0][2].usage.prompt_tokens,
        "tokens_per_s": stat(speeds, "tokens/s") if speeds else None,
        "ms_per_token": stat([1000 / s for s in speeds], "ms") if speeds else None,
        "wall_check_tokens_per_s": stat(checks, "tokens/s") if checks else None,
        "time_to_first_token_s": stat([wall_1 for _, wall_1, _ in runs], "s"),
        "call_s": stat([wall_n for wall_n, _, _ in runs], "s"),
    }


def section_decode(bench: Bench) -> dict[str, Any]:
    """Greedy decoding at batch 1, the default path (dynamic KV cache, eager PyTorch)."""
    if bench.settings.max_new_tokens < 2:
        raise ValueError("decode needs --max-new-tokens of at least 2")
    vm = bench.model()
    return {**bench.workload(), **_decode_runs(bench, vm, bench.prompt())}


def section_compile(bench: Bench) -> dict[str, Any]:
    """Greedy decoding at batch 1 with ``compile=True`` (static KV cache, compiled step, CUDA
    graphs on GPU). The first call compiles; its extra time is reported on its own."""
    if bench.settings.max_new_tokens < 2:
        raise ValueError("compile needs --max-new-tokens of at least 2")
    bench.close_model()  # never two copies of the weights at once
    bench.log("loading the model with compile=True")
    load_s, vm = bench.clock.time(lambda: bench.load(compile=True))
    try:
        prompt = bench.prompt()
        bench.log("first compiled call (compiles)")
        first_s, _ = _generate_wall(bench, vm, prompt, bench.settings.max_new_tokens)
        bench.log("compiled runs")
        measured = _decode_runs(bench, vm, prompt, warmed_up=True)
    finally:
        vm.close()
    steady_call = measured["call_s"]["median"]
    default = bench.results.get("decode", {}).get("tokens_per_s")
    compiled = measured["tokens_per_s"]
    return {
        **bench.workload(),
        **measured,
        "load_s": load_s,
        "first_call_s": first_s,
        "compile_s": max(0.0, first_s - steady_call),
        "speedup_vs_default": (
            ratio(compiled["median"], default["median"])
            if compiled is not None and default is not None
            else None
        ),
    }


def section_batch(bench: Bench) -> dict[str, Any]:
    """``generate_batch`` throughput: every row its own image (distinct pixels, so the feature
    cache cannot help) and ``max_new_tokens`` greedy tokens, no early stop."""
    vm = bench.model()
    n = bench.settings.max_new_tokens
    rows = []
    for batch_size in bench.settings.batch_sizes:
        bench.log(f"batch size {batch_size}")
        prompts = [bench.prompt(seed_offset=1 + row) for row in range(batch_size)]

        def once(prompts: list[Prompt] = prompts, batch_size: int = batch_size) -> tuple[float, list[Any]]:
            vm.clear_caches()
            return bench.clock.time(
                lambda: vm.generate_batch(prompts, batch_size=batch_size, max_new_tokens=n, stop=[])
            )

        runs = repeat(bench.settings.runs, once)
        errors = [r.error.message for _, results in runs for r in results if r.error is not None]
        if errors:
            raise RuntimeError(f"batch size {batch_size}: {errors[0]}")
        made = [sum(r.usage.completion_tokens for r in results) for _, results in runs]
        decode = [max(r.timings.decode_s for r in results) for _, results in runs]
        rows.append(
            {
                "batch_size": batch_size,
                "prompt_tokens_per_row": runs[0][1][0].usage.prompt_tokens,
                "generated_tokens": min(made),
                "call_s": stat([wall for wall, _ in runs], "s"),
                "tokens_per_s": stat([t / wall for t, (wall, _) in zip(made, runs, strict=True)], "tokens/s"),
                "decode_tokens_per_s": stat(
                    [(t - batch_size) / d for t, d in zip(made, decode, strict=True) if d > 0], "tokens/s"
                ),
                "time_to_first_token_s": stat(
                    [results[0].timings.time_to_first_token_s for _, results in runs], "s"
                ),
            }
        )
    return {**bench.workload(), "max_new_tokens": n, "rows": rows}


def section_chat(bench: Bench) -> dict[str, Any]:
    """A chat's second turn about the same image, three ways in each run: turn 1 (cold), turn 2
    right after it with reuse (cached image features, the turn-1 KV cache), and turn 2 on a model
    loaded with ``feature_cache_size=0, reuse_prefix=False`` (everything recomputed)."""
    from .prompt import Prompt

    vm = bench.model()
    bench.log("loading a second model without caches")
    cold = bench.load(feature_cache_size=0, reuse_prefix=False)
    turn1 = Prompt().user("What is in this picture?", images=[bench.image()])
    turn2 = turn1.assistant("A square of coloured noise.").user("Which colour is most common?")

    def once() -> tuple[float, float, float, int, Any, Any]:
        t1, first = _generate_wall(bench, vm, turn1, 1)  # clears the caches first
        before = vm.prefix_reused_tokens
        t2, second = bench.clock.time(lambda: vm.generate(turn2, max_new_tokens=1, stop=[]))
        reused = vm.prefix_reused_tokens - before
        t2_cold, _ = bench.clock.time(lambda: cold.generate(turn2, max_new_tokens=1, stop=[]))
        return t1, t2, t2_cold, reused, first, second

    try:
        runs = repeat(bench.settings.runs, once)
    finally:
        cold.close()
    t1 = [run[0] for run in runs]
    t2 = [run[1] for run in runs]
    t2_cold = [run[2] for run in runs]
    return {
        **bench.workload(),
        "turn1_prompt_tokens": runs[0][4].usage.prompt_tokens,
        "turn2_prompt_tokens": runs[0][5].usage.prompt_tokens,
        "turn2_reused_tokens": min(run[3] for run in runs),
        "turn1_time_to_first_token_s": stat(t1, "s"),
        "turn2_reuse_time_to_first_token_s": stat(t2, "s"),
        "turn2_reuse_preprocess_s": stat([run[5].timings.preprocess_s for run in runs], "s"),
        "turn2_cold_time_to_first_token_s": stat(t2_cold, "s"),
        "turn1_over_turn2": ratio(statistics.median(t1), statistics.median(t2)),
        "turn2_cold_over_reuse": ratio(statistics.median(t2_cold), statistics.median(t2)),
    }


def _model_bytes(vm: VisionModel) -> int:
    module = vm.module
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def probe(
    path: str,
    device: str,
    dtype: str,
    attn: str,
    num_crops: int,
    image_size: tuple[int, int],
    max_new_tokens: int,
    seed: int,
) -> dict[str, Any]:
    """Run in a fresh interpreter: the memory of one ``from_pretrained`` and then of one
    generation (one image, ``max_new_tokens``), each peak reset just before its step.

    A fresh process keeps the figures clean: a process that already loaded or generated keeps
    freed memory in its allocator and would hide the peaks. The libraries are imported before
    the baseline, so the load's figure is its own (weights, buffers, tokenizer, loader)."""
    import accelerate  # noqa: F401 - imported before the baseline, like the modules below
    import safetensors  # noqa: F401
    import torch

    from . import loading  # noqa: F401
    from .model import VisionModel
    from .modeling import phi3v  # noqa: F401
    from .prompt import Prompt

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.init()
    prompt = Prompt().user(QUESTION, images=[synthetic_image(*image_size, seed=seed)])
    meter = RssMeter()
    gc.collect()
    before = meter.current()
    meter.reset()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    vm = VisionModel.from_pretrained(
        path, device=device, dtype=dtype, attn_implementation=attn, num_crops=num_crops
    )
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    load_peak = meter.peak()
    cuda_load_peak = int(torch.cuda.max_memory_allocated()) if cuda else None

    gc.collect()
    call_before = meter.current()
    meter.reset()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    vm.generate(prompt, max_new_tokens=max_new_tokens, stop=[])
    return {
        "weights_bytes": _model_bytes(vm),
        "num_parameters": vm.info.num_parameters,
        "load_s": load_s,
        "rss_before_load_bytes": before,
        "load_peak_rss_bytes": load_peak,
        "load_cuda_max_allocated_bytes": cuda_load_peak,
        "rss_after_load_bytes": call_before,
        "call_peak_rss_bytes": meter.peak(),
        "call_cuda_max_allocated_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
        "method": meter.method,
    }


def probe_runs(bench: Bench) -> list[dict[str, Any]]:
    """``probe`` in a new process per run, after one warm-up process (which fills the page
    cache with the checkpoint's files, as any load after the first finds it). Run once and
    shared by the memory and loading sections."""
    if bench.probes is not None:
        return bench.probes
    s = bench.settings
    command = [sys.executable, "-m", "phi3vision.bench", "--probe", str(s.checkpoint)]
    command += ["--device", s.device, "--dtype", s.dtype, "--attn", s.attn, "--num-crops", str(s.num_crops)]
    command += ["--image-size", _size_text(s.image_size), "--max-new-tokens", str(s.max_new_tokens)]
    command += ["--seed", str(s.seed)]
    if s.threads is not None:
        command += ["--threads", str(s.threads)]

    def once() -> dict[str, Any]:
        bench.log("memory probe in a new process")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the probe process failed ({done.returncode}): {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    bench.probes = repeat(s.runs, once)
    return bench.probes


def _column(runs: Sequence[dict[str, Any]], key: str, unit: str) -> dict[str, Any] | None:
    values = [float(run[key]) for run in runs if run[key] is not None]
    return stat(values, unit) if values else None


def section_memory(bench: Bench) -> dict[str, Any]:
    """Peak memory of one generation (one image, ``max_new_tokens``) right after loading, in a
    fresh process: host RSS and, on a GPU, ``torch.cuda.max_memory_allocated``."""
    runs = probe_runs(bench)
    added = [float(r["call_peak_rss_bytes"] - r["rss_after_load_bytes"]) for r in runs]
    weights = int(runs[0]["weights_bytes"])
    cuda = _column(runs, "call_cuda_max_allocated_bytes", "bytes")
    return {
        **bench.workload(),
        "max_new_tokens": bench.settings.max_new_tokens,
        "weights_bytes": weights,
        "rss_after_load_bytes": _column(runs, "rss_after_load_bytes", "bytes"),
        "call_peak_rss_bytes": _column(runs, "call_peak_rss_bytes", "bytes"),
        "call_added_rss_bytes": stat(added, "bytes"),
        "call_cuda_max_allocated_bytes": cuda,
        "cuda_over_weights": ratio(cuda["median"], weights) if cuda is not None else None,
        "method": runs[0]["method"],
    }


def section_loading(bench: Bench) -> dict[str, Any]:
    """Peak RSS while loading against the weights' size at the loaded dtype, in a fresh process."""
    runs = probe_runs(bench)
    weights = int(runs[0]["weights_bytes"])
    added = [float(r["load_peak_rss_bytes"] - r["rss_before_load_bytes"]) for r in runs]
    cuda = _column(runs, "load_cuda_max_allocated_bytes", "bytes")
    files = [*bench.settings.checkpoint.glob("*.safetensors")]
    return {
        "weights_bytes": weights,
        "file_bytes": sum(f.stat().st_size for f in files),
        "rss_before_bytes": _column(runs, "rss_before_load_bytes", "bytes"),
        "peak_rss_bytes": _column(runs, "load_peak_rss_bytes", "bytes"),
        "load_added_rss_bytes": stat(added, "bytes"),
        "added_rss_over_weights": ratio(statistics.median(added), weights),
        "cuda_max_allocated_bytes": cuda,
        "cuda_over_weights": ratio(cuda["median"], weights) if cuda is not None else None,
        "load_s": _column(runs, "load_s", "s"),
        "target_ratio": LOADING_TARGET,
        "method": runs[0]["method"],
    }


SECTION_FUNCTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "preprocess": section_preprocess,
    "vision": section_vision,
    "prefill": section_prefill,
    "decode": section_decode,
    "batch": section_batch,
    "chat": section_chat,
    "memory": section_memory,
    "compile": section_compile,
    "loading": section_loading,
}


# -- markdown ---------------------------------------------------------------------------------


def num(value: float | None) -> str:
    """A number with about three significant digits, never in exponent notation."""
    if value is None:
        return "n/a"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size == 0:
        return "0"
    return f"{value:.3g}"


def spread(figure: dict[str, Any] | None, scale: float = 1.0) -> str:
    """``median (min–max)`` of a stat, multiplied by ``scale`` (1000 for ms)."""
    if figure is None:
        return "n/a"
    return f"{num(figure['median'] * scale)} ({num(figure['min'] * scale)}–{num(figure['max'] * scale)})"


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f} MiB"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{num(value)}x"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables, one per section; times are median (min–max) in ms."""
    machine, settings, sections = report["machine"], report["settings"], report["sections"]
    parts = [
        "## Machine and settings",
        "",
        table(
            ["field", "value"],
            [
                ["command", f"`{report['command']}`"],
                ["platform", machine["platform"]],
                ["CPU", f"{machine['cpu_model']} ({machine['cpu_count']} logical CPUs)"],
                ["GPU", machine["gpu"] or "none"],
                [
                    "python / torch / transformers",
                    f"{machine['python']} / {machine['torch']} / {machine['transformers']}",
                ],
                ["torch threads", str(machine["torch_threads"])],
                ["load average (start → end)", _load_text(machine)],
                ["model", settings["model"]],
                [
                    "parameters",
                    f"{settings['num_parameters']:,}" if settings.get("num_parameters") else "n/a",
                ],
                [
                    "device / dtype / attention",
                    f"{settings['device']} / {settings['dtype']} / {settings['attn']}",
                ],
                ["runs", f"{settings['runs']} (median, min–max, after 1 warm-up)"],
                ["benchmark process peak RSS", mib(report.get("process_peak_rss_bytes"))],
                ["benchmark time", f"{num(report['elapsed_s'])} s"],
            ],
        ),
    ]
    for name in SECTIONS:
        if name not in sections:
            continue
        body = sections[name]
        title = SECTION_TITLES[name]
        parts += ["", f"## {title}", ""]
        if "skipped" in body:
            parts.append(f"Skipped: {body['skipped']}.")
        elif "error" in body:
            parts.append(f"Failed: {body['error']}")
        else:
            parts.append(SECTION_RENDERERS[name](body))
    return "\n".join(parts) + "\n"


def _load_text(machine: dict[str, Any]) -> str:
    start, end = machine.get("load_average_at_start"), machine.get("load_average_at_end")
    if not start:
        return "n/a"
    return f"{start[0]:.2f} → {end[0]:.2f}" if end else f"{start[0]:.2f}"


def _md_preprocess(body: dict[str, Any]) -> str:
    rows = [
        [
            r["image"],
            str(r["num_crops"]),
            f"{r['resized_to']} ({r['crops']} crops)",
            spread(r["floor_s"], 1000),
            spread(r["transform_s"], 1000),
            _times(r["transform_vs_floor"]),
            spread(r["encode_s"], 1000),
            _times(r["encode_vs_floor"]),
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


def _md_prefill(body: dict[str, Any]) -> str:
    return table(
        ["image", "num_crops", "prompt tokens", "time to first token ms", "of which preprocessing ms"],
        [
            [
                body["image"],
                str(body["num_crops"]),
                str(body["prompt_tokens"]),
                spread(body["time_to_first_token_s"], 1000),
                spread(body["preprocess_s"], 1000),
            ]
        ],
    )


def _decode_row(label: str, body: dict[str, Any]) -> list[str]:
    return [
        label,
        str(body["max_new_tokens"]),
        spread(body["tokens_per_s"]),
        spread(body["ms_per_token"]),
        spread(body["wall_check_tokens_per_s"]),
        spread(body["time_to_first_token_s"], 1000),
    ]


DECODE_HEADERS = ["path", "new tokens", "decode tokens/s", "ms/token", "wall-clock check tokens/s", "TTFT ms"]


def _md_decode(body: dict[str, Any]) -> str:
    return table(DECODE_HEADERS, [_decode_row("default", body)]) + (
        f"\n\nOne image ({body['image']}, num_crops {body['num_crops']}), "
        f"{body['prompt_tokens']} prompt tokens, batch 1, greedy, no early stop."
    )


def _md_compile(body: dict[str, Any]) -> str:
    return (
        table(DECODE_HEADERS, [_decode_row("compile=True", body)])
        + f"\n\nLoad {num(body['load_s'])} s; first call {num(body['first_call_s'])} s, of which about "
        f"{num(body['compile_s'])} s compiling. Speed-up over the default path in this run: "
        f"{_times(body['speedup_vs_default'])}."
    )


def _md_batch(body: dict[str, Any]) -> str:
    rows = [
        [
            str(r["batch_size"]),
            str(r["prompt_tokens_per_row"]),
            str(r["generated_tokens"]),
            spread(r["call_s"], 1000),
            spread(r["tokens_per_s"]),
            spread(r["decode_tokens_per_s"]),
        ]
        for r in body["rows"]
    ]
    return (
        table(
            [
                "batch size",
                "prompt tokens/row",
                "tokens generated",
                "call ms",
                "tokens/s, all rows (whole call)",
                "decode tokens/s, all rows",
            ],
            rows,
        )
        + f"\n\nEach row: its own {body['image']} image at num_crops {body['num_crops']}, "
        f"{body['max_new_tokens']} new tokens."
    )


def _md_chat(body: dict[str, Any]) -> str:
    rows = [
        [
            "turn 1 (cold)",
            str(body["turn1_prompt_tokens"]),
            "0",
            spread(body["turn1_time_to_first_token_s"], 1000),
        ],
        [
            "turn 2, with reuse",
            str(body["turn2_prompt_tokens"]),
            str(body["turn2_reused_tokens"]),
            spread(body["turn2_reuse_time_to_first_token_s"], 1000),
        ],
        [
            "turn 2, feature_cache_size=0, reuse_prefix=False",
            str(body["turn2_prompt_tokens"]),
            "0",
            spread(body["turn2_cold_time_to_first_token_s"], 1000),
        ],
    ]
    return (
        table(["call", "prompt tokens", "reused tokens", "time to first token ms"], rows)
        + f"\n\nTurn 2 with reuse is {_times(body['turn2_cold_over_reuse'])} faster than turn 2 without "
        f"caches, {_times(body['turn1_over_turn2'])} faster than turn 1. Of its time to first token, "
        f"{spread(body['turn2_reuse_preprocess_s'], 1000)} ms is preprocessing (the call's own "
        "preprocess_s: reading the image, its content fingerprint and tokenising; the HD transform "
        "is skipped because the image's features are cached)."
    )


def _md_memory(body: dict[str, Any]) -> str:
    rows = [
        ["weights and buffers", mib(body["weights_bytes"])],
        ["RSS after loading", spread_bytes(body["rss_after_load_bytes"])],
        ["peak RSS during the call", spread_bytes(body["call_peak_rss_bytes"])],
        ["RSS added by the call (peak - after loading)", spread_bytes(body["call_added_rss_bytes"])],
        [
            "torch.cuda.max_memory_allocated during the call",
            spread_bytes(body["call_cuda_max_allocated_bytes"]),
        ],
    ]
    return (
        table(["first generation after loading (fresh process per run)", "value"], rows)
        + f"\n\nOne image ({body['image']}, num_crops {body['num_crops']}), {body['max_new_tokens']} "
        f"new tokens. Peak: {body['method']}."
    )


def spread_bytes(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return "n/a"
    return f"{mib(figure['median'])} ({mib(figure['min'])}–{mib(figure['max'])})"


def _md_loading(body: dict[str, Any]) -> str:
    rows = [
        ["weights at the loaded dtype", mib(body["weights_bytes"])],
        ["safetensors files", mib(body["file_bytes"])],
        ["RSS before from_pretrained", spread_bytes(body["rss_before_bytes"])],
        ["peak RSS during from_pretrained", spread_bytes(body["peak_rss_bytes"])],
        ["RSS added by the load (peak - before)", spread_bytes(body["load_added_rss_bytes"])],
        ["added RSS / weights", _times(body["added_rss_over_weights"])],
        ["torch.cuda.max_memory_allocated", spread_bytes(body["cuda_max_allocated_bytes"])],
        ["load time s", spread(body["load_s"])],
    ]
    return (
        table(["loading (fresh process per run)", "value"], rows)
        + f"\n\nTarget: added RSS / weights < {body['target_ratio']}. Peak: {body['method']}."
    )


SECTION_TITLES = {
    "preprocess": "Image preprocessing (per image)",
    "vision": "Vision encoder (one image)",
    "prefill": "Time to first token (one image)",
    "decode": "Decode, batch 1",
    "compile": "Decode, batch 1, compile=True",
    "batch": "Batch throughput (generate_batch)",
    "chat": "Chat: second turn about the same image",
    "memory": "Peak memory",
    "loading": "Loading",
}

SECTION_RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "preprocess": _md_preprocess,
    "vision": _md_vision,
    "prefill": _md_prefill,
    "decode": _md_decode,
    "compile": _md_compile,
    "batch": _md_batch,
    "chat": _md_chat,
    "memory": _md_memory,
    "loading": _md_loading,
}


# -- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m phi3vision.bench",
        description="Benchmark phi3vision on this machine: preprocessing, vision encoder, time to first "
        "token, decoding, batches, chat reuse, memory and loading. Markdown tables and a JSON line on "
        "stdout, progress on stderr.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--model", help="a checkpoint directory or Hub id (default: random weights, see --size)"
    )
    which.add_argument(
        "--size",
        choices=sorted(MODEL_SIZES),
        default="tiny",
        help="random-weight model size: tiny, mid (a few minutes in all on a 2-core CPU) "
        "or full (the real 4.2B shapes)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default auto)")
    parser.add_argument(
        "--attn", default="auto", help="auto, eager, sdpa or flash_attention_2 (default auto)"
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="measured runs per figure, after one warm-up (default 5)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per generation (default 64)")
    parser.add_argument("--batch-sizes", type=parse_ints, default=[1, 2, 4, 8], help="default 1,2,4,8")
    parser.add_argument(
        "--num-crops",
        type=int,
        help="num_crops of the model sections (default 16 for --model/full, 4 for tiny/mid)",
    )
    parser.add_argument(
        "--image-size",
        type=parse_size,
        default=(1024, 1024),
        help="image of the model sections (default 1024x1024)",
    )
    parser.add_argument(
        "--image-sizes",
        type=parse_sizes,
        default=parse_sizes(DEFAULT_IMAGE_SIZES),
        help=f"images of the preprocessing section (default {DEFAULT_IMAGE_SIZES})",
    )
    parser.add_argument(
        "--crops",
        type=parse_ints,
        default=parse_ints(DEFAULT_CROPS),
        help=f"num_crops values of the preprocessing section (default {DEFAULT_CROPS})",
    )
    parser.add_argument(
        "--sections", type=parse_sections, default=list(SECTIONS), help=f"a subset of: {','.join(SECTIONS)}"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the compile=True section")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) (default: torch's choice)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights and images (default 0)"
    )
    parser.add_argument("--json", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--markdown", type=Path, help="also write the markdown tables to this file")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: memory of one load and call
    return parser


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def checkpoint_directory(args: argparse.Namespace) -> Iterator[tuple[Path, str]]:
    """The checkpoint to measure: ``--model``'s directory, or random weights of ``--size``
    written into a temporary directory that is removed afterwards."""
    if args.model is not None:
        from .loading import open_checkpoint

        yield open_checkpoint(args.model).directory, str(args.model)
        return
    from .testing.checkpoint import tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="phi3vision-bench-") as temporary:
        _log(f"writing a random-weight '{args.size}' checkpoint")
        # bfloat16 on disk, as the released checkpoints; the real one has 2 shards.
        sizes: dict[str, Any] = MODEL_SIZES[args.size]
        directory = tiny_checkpoint(
            Path(temporary) / "checkpoint", seed=args.seed, shards=2 if args.size == "full" else 1, **sizes
        )
        yield directory, f"random weights, size {args.size}"


def resolve_device(args: argparse.Namespace) -> tuple[str, str, str]:
    """The device, dtype and attention that "auto" means here (the same rules as loading)."""
    from .devices import choose_attn_implementation, choose_device, choose_dtype

    device, _ = choose_device(args.device)
    dtype, _ = choose_dtype(args.dtype, device)
    attn = choose_attn_implementation(args.attn, device, dtype)
    return str(device), str(dtype).removeprefix("torch."), attn.value


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Every chosen section, each in turn; a failing section is recorded and the rest still run."""
    started = time.perf_counter()
    device, dtype, attn = resolve_device(args)
    report: dict[str, Any] = {
        "benchmark": "phi3vision.bench",
        "format": 1,
        "command": shlex.join(["python", "-m", "phi3vision.bench", *argv]),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "sections": {},
    }
    crops = args.num_crops or (16 if args.model is not None else DEFAULT_NUM_CROPS[args.size])
    with checkpoint_directory(args) as (directory, label):
        settings = Settings(
            checkpoint=directory,
            device=device,
            dtype=dtype,
            attn=attn,
            runs=args.runs,
            max_new_tokens=args.max_new_tokens,
            num_crops=crops,
            image_size=args.image_size,
            batch_sizes=args.batch_sizes,
            preprocess_sizes=args.image_sizes,
            preprocess_crops=args.crops,
            threads=args.threads,
            seed=args.seed,
        )
        bench = Bench(settings=settings, meter=RssMeter(), log=_log)
        report["settings"] = {
            "model": label,
            "size": None if args.model is not None else args.size,
            "sizes": None if args.model is not None else MODEL_SIZES[args.size],
            "device": device,
            "dtype": dtype,
            "attn": attn,
            "runs": args.runs,
            "warmup_runs": 1,
            "max_new_tokens": args.max_new_tokens,
            "num_crops": crops,
            "image_size": _size_text(args.image_size),
            "batch_sizes": args.batch_sizes,
            "sections": args.sections,
            "threads": args.threads,
            "seed": args.seed,
        }
        for name in args.sections:
            if name == "compile" and args.no_compile:
                report["sections"][name] = {"skipped": "--no-compile"}
                continue
            _log(f"section {name}")
            try:
                bench.results[name] = report["sections"][name] = SECTION_FUNCTIONS[name](bench)
            except Exception as exc:  # a benchmark reports what broke and measures the rest
                traceback.print_exc(file=sys.stderr)
                report["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            if bench.loaded is not None and "num_parameters" not in report["settings"]:
                report["settings"]["num_parameters"] = bench.loaded.info.num_parameters
        if "num_parameters" not in report["settings"] and bench.probes:
            report["settings"]["num_parameters"] = bench.probes[0]["num_parameters"]
        report["settings"].setdefault("num_parameters", None)
        bench.close_model()
        report["process_peak_rss_bytes"] = bench.meter.overall_peak()
    report["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["elapsed_s"] = time.perf_counter() - started
    return report


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.probe is not None:
        measured = probe(
            args.probe,
            args.device,
            args.dtype,
            args.attn,
            args.num_crops or 16,
            args.image_size,
            args.max_new_tokens,
            args.seed,
        )
        print(json.dumps(measured))
        return 0
    if args.runs < 1 or args.max_new_tokens < 1:
        print("--runs and --max-new-tokens must be at least 1", file=sys.stderr)
        return 2
    report = run(args, arguments)
    markdown = render_markdown(report)
    print(markdown)
    if args.markdown is not None:
        args.markdown.write_text(markdown, encoding="utf-8")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report), flush=True)
    failed = [name for name, body in report["sections"].items() if "error" in body]
    if failed:
        _log(f"failed sections: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
