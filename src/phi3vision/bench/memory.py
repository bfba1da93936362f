"""Section ``memory``: peak memory of a generation, measured by ``probe`` in fresh processes
(the probes are shared with the ``loading`` section)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .harness import QUESTION, Bench, Section
from .measure import RssMeter, ratio, repeat, size_text, stat, synthetic_image
from .tables import mib, spread_bytes, table

if TYPE_CHECKING:
    from ..model import VisionModel


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

    from .. import loading  # noqa: F401
    from ..model import VisionModel
    from ..modeling import phi3v  # noqa: F401
    from ..prompt import Prompt

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
    command += ["--image-size", size_text(s.image_size), "--max-new-tokens", str(s.max_new_tokens)]
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


def column(runs: Sequence[dict[str, Any]], key: str, unit: str) -> dict[str, Any] | None:
    values = [float(run[key]) for run in runs if run[key] is not None]
    return stat(values, unit) if values else None


def section_memory(bench: Bench) -> dict[str, Any]:
    """Peak memory of one generation (one image, ``max_new_tokens``) right after loading, in a
    fresh process: host RSS and, on a GPU, ``torch.cuda.max_memory_allocated``."""
    runs = probe_runs(bench)
    added = [float(r["call_peak_rss_bytes"] - r["rss_after_load_bytes"]) for r in runs]
    weights = int(runs[0]["weights_bytes"])
    cuda = column(runs, "call_cuda_max_allocated_bytes", "bytes")
    return {
        **bench.workload(),
        "max_new_tokens": bench.settings.max_new_tokens,
        "weights_bytes": weights,
        "rss_after_load_bytes": column(runs, "rss_after_load_bytes", "bytes"),
        "call_peak_rss_bytes": column(runs, "call_peak_rss_bytes", "bytes"),
        "call_added_rss_bytes": stat(added, "bytes"),
        "call_cuda_max_allocated_bytes": cuda,
        "cuda_over_weights": ratio(cuda["median"], weights) if cuda is not None else None,
        "method": runs[0]["method"],
    }


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


SECTION = Section("memory", "Peak memory", section_memory, _md_memory)
