"""The quantisation benchmark: float32 against quantised loading, on one checkpoint.

``python -m phi3vision.bench_quant`` (or ``python -m phi3vision.bench --sections quant``) writes
a random-weight checkpoint with the real language-model width (hidden 3072, MLP 8192, vocabulary
32064, 32 heads; ``--layers`` decoder layers, a tiny vision tower) unless ``--model`` names one,
and measures, each figure the median of ``--runs`` fresh processes per scheme (after one warm-up
process that fills the page cache):

- the resident memory a load adds (peak RSS during ``from_pretrained`` minus the RSS before,
  libraries already imported), and after it;
- batch-1 decode tokens/s (``timings.tokens_per_second`` of a text prompt, ``--new-tokens``);
- greedy top-1 agreement with float32: the argmax of the logits at every position of one
  fixed prompt, quantised against float32;
- the peak RSS of one call with one image at ``--num-crops`` against ``phi3vision.plan_memory``;
- a calibration of the agreement figure on this checkpoint: float32's agreement with itself
  when the quantised layers' weights get Gaussian noise of a known relative size, next to the
  relative error of the int8 weights (what a weight error of that size costs here).

Ratios compare figures of the same run. Output: a markdown table, then one JSON line.

``--device cuda`` compares bfloat16 with int8, int4 and nf4 instead (the reference is
bfloat16), and the memory figures are the GPU's (``torch.cuda`` allocated bytes, not RSS);
``--layers 32`` gives the full-size language model.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WIDE_SIZES: dict[str, Any] = {"hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32}
"""The real language model's width (tests/reference config); the layers are set by ``--layers``."""

PROMPT_TEXT = (
    "The quick brown fox jumps over the lazy dog. A vision language model reads images and text "
    "together: it describes photographs, reads documents and charts, compares pictures and answers "
    "questions about them. Quantised weights make it fit on smaller machines, if the answers stay "
    "the same. This paragraph is the prompt over which the greedy choices are compared. "
) * 4

NOISE_LEVELS = (0.001, 0.002, 0.004, 0.008)
"""Relative RMS sizes of the Gaussian weight noise of the agreement calibration."""

TARGETS = {"rss_ratio": 0.55, "agreement": 0.95, "decode_speedup": 1.5, "plan_error": 0.15}
"""Issue 14: int8 load RSS <= 0.55x float32, top-1 agreement >= 95%, decode >= 1.5x float32,
memory plan within 15% of the measured call peak."""


class CudaMeter:
    """``RssMeter``'s interface over the GPU's allocated bytes (``torch.cuda``)."""

    @staticmethod
    def current() -> int:
        import torch

        return int(torch.cuda.memory_allocated())

    @staticmethod
    def reset() -> bool:
        import torch

        torch.cuda.reset_peak_memory_stats()
        return True

    @staticmethod
    def peak() -> int:
        import torch

        return int(torch.cuda.max_memory_allocated())


def probe(
    path: str, quantization: str | None, dtype: str, num_crops: int, new_tokens: int, device: str = "cpu"
) -> dict[str, Any]:
    """In a fresh process: load, then decode, then the logits over the prompt, then one image call."""
    import safetensors  # noqa: F401 - imported before the baseline
    import torch

    from . import loading  # noqa: F401
    from .bench import RssMeter, synthetic_image
    from .memory import plan_memory
    from .model import VisionModel
    from .modeling import phi3v  # noqa: F401
    from .prompt import Prompt

    meter: RssMeter | CudaMeter = CudaMeter() if device.startswith("cuda") else RssMeter()
    gc.collect()
    before = meter.current()
    meter.reset()
    vm = VisionModel.from_pretrained(
        path, device=device, dtype=dtype, quantization=quantization, num_crops=num_crops
    )
    load_peak = meter.peak()
    after = meter.current()

    text_prompt = Prompt().user("Tell a long story about a lighthouse.")
    vm.generate(text_prompt, max_new_tokens=4, stop=[])  # warm-up
    speeds = [
        vm.generate(text_prompt, max_new_tokens=new_tokens, stop=[]).timings.tokens_per_second
        for _ in range(3)
    ]
    encoding = vm.encode(Prompt().user(PROMPT_TEXT))
    top1 = vm.logits(encoding)[0].argmax(-1).cpu().tolist()

    image_prompt = Prompt().user("Describe this image.", images=[synthetic_image(1344, 1344, seed=0)])
    image_encoding = vm.encode(image_prompt)
    gc.collect()
    call_before = meter.current()
    meter.reset()
    vm.generate(image_prompt, max_new_tokens=new_tokens, stop=[])
    call_peak = meter.peak()
    plan = plan_memory(
        path,
        device=device,
        dtype=dtype,
        quantization=quantization,
        num_crops=num_crops,
        prompt_tokens=int(image_encoding.input_ids.shape[1]),
        max_new_tokens=new_tokens,
    )
    calibration = agreement_calibration(vm, encoding) if quantization is None and dtype == "float32" else {}
    del torch
    return {
        **calibration,
        "rss_before_load_bytes": before,
        "load_added_rss_bytes": load_peak - before,
        "after_load_added_rss_bytes": after - before,
        "decode_tokens_per_s": statistics.median(speeds),
        "top1": top1,
        "call_peak_added_rss_bytes": call_peak - before,
        "call_added_over_loaded_bytes": call_peak - call_before,
        "plan_total_bytes": plan.total_bytes,
        "plan_weights_bytes": plan.weights_bytes,
        "prompt_tokens": plan.prompt_tokens,
    }


def agreement_calibration(vm: Any, encoding: Any) -> dict[str, Any]:
    """On a float32 model: the top-1 choices over ``encoding`` with Gaussian noise of each of
    ``NOISE_LEVELS`` (relative to each weight's RMS) added to the layers that quantisation
    replaces, and the relative RMS error of those weights quantised to int8 (when torchao is
    installed). The weights are restored afterwards."""
    import importlib.util

    import torch

    from .quantization import is_quantization_target

    targets = [m for name, m in vm.module.named_modules() if is_quantization_target(name, m)]
    originals = [m.weight.detach().clone() for m in targets]
    generator = torch.Generator().manual_seed(0)
    noisy_top1: dict[str, list[int]] = {}
    try:
        for level in NOISE_LEVELS:
            with torch.no_grad():
                for module, weight in zip(targets, originals, strict=True):
                    scale = weight.pow(2).mean().sqrt() * level
                    module.weight.copy_(weight + torch.randn(weight.shape, generator=generator) * scale)
            noisy_top1[str(level)] = vm.logits(encoding)[0].argmax(-1).tolist()
    finally:
        with torch.no_grad():
            for module, weight in zip(targets, originals, strict=True):
                module.weight.copy_(weight)
    result: dict[str, Any] = {"noise_top1": noisy_top1, "int8_weight_error": None}
    if importlib.util.find_spec("torchao") is not None:
        from .modeling.quantized import Int8CpuLinear

        squared_error = squared_norm = 0.0
        for module in targets:
            quantized = Int8CpuLinear.from_linear(module, torch.float32)
            restored = quantized.weight.float() * quantized.scale.float()[:, None]
            squared_error += float((restored - module.weight).pow(2).sum())
            squared_norm += float(module.weight.pow(2).sum())
        result["int8_weight_error"] = (squared_error / squared_norm) ** 0.5
    return result


def _run_probe(path: Path, variant: Variant, num_crops: int, new_tokens: int, device: str) -> dict[str, Any]:
    dtype, quantization = variant
    command = [sys.executable, "-m", "phi3vision.bench_quant", "--probe", str(path), "--device", device]
    command += ["--dtype", dtype, "--num-crops", str(num_crops), "--new-tokens", str(new_tokens)]
    if quantization is not None:
        command += ["--quantization", quantization]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the probe process failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


Variant = tuple[str, "str | None"]

VARIANTS: tuple[Variant, ...] = (("float32", None), ("bfloat16", None), ("float32", "int8"))
"""(dtype, quantization) of each row on a CPU; the first is the reference. bfloat16 without
quantisation shows the agreement that mere rounding of full weights gives on random weights."""

CUDA_VARIANTS: tuple[Variant, ...] = (
    ("bfloat16", None),
    ("bfloat16", "int8"),
    ("bfloat16", "int4"),
    ("bfloat16", "nf4"),
)
"""The rows on a GPU, against bfloat16 (what ``dtype="auto"`` loads there)."""


def _name(variant: Variant) -> str:
    dtype, quantization = variant
    return f"{dtype} + {quantization}" if quantization else dtype


def measure(
    path: Path,
    runs_per_variant: int,
    num_crops: int,
    new_tokens: int,
    log: Callable[[str], None],
    device: str = "cpu",
) -> dict[str, Any]:
    """Every variant, ``runs_per_variant`` fresh processes each, interleaved so that a change in
    the machine's load hits every variant alike; ratios are against the first (float32 on a
    CPU, bfloat16 on a GPU)."""
    variants = list(CUDA_VARIANTS if device.startswith("cuda") else VARIANTS)
    _run_probe(path, variants[0], num_crops, new_tokens, device)  # warm-up: the page cache
    runs: dict[Variant, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for run in range(runs_per_variant):
        for variant in variants:
            log(f"quant probe {_name(variant)} run {run + 1}/{runs_per_variant}")
            runs[variant].append(_run_probe(path, variant, num_crops, new_tokens, device))
    base = variants[0]
    reference = runs[base][0]["top1"]

    def median(variant: Variant, key: str) -> float:
        return float(statistics.median(float(r[key]) for r in runs[variant]))

    rows: dict[str, Any] = {}
    for variant in variants:
        agreement = [
            sum(a == b for a, b in zip(r["top1"], reference, strict=True)) / len(reference)
            for r in runs[variant]
        ]
        plan_error = [
            (r["plan_total_bytes"] - r["call_peak_added_rss_bytes"]) / r["call_peak_added_rss_bytes"]
            for r in runs[variant]
        ]
        rows[_name(variant)] = {
            "load_added_rss_bytes": median(variant, "load_added_rss_bytes"),
            "after_load_added_rss_bytes": median(variant, "after_load_added_rss_bytes"),
            "rss_ratio": median(variant, "load_added_rss_bytes") / median(base, "load_added_rss_bytes"),
            "decode_tokens_per_s": median(variant, "decode_tokens_per_s"),
            "decode_speedup": median(variant, "decode_tokens_per_s") / median(base, "decode_tokens_per_s"),
            "top1_agreement": statistics.median(agreement),
            "call_peak_added_rss_bytes": median(variant, "call_peak_added_rss_bytes"),
            "plan_total_bytes": median(variant, "plan_total_bytes"),
            "plan_error": statistics.median(plan_error),
            "prompt_positions": len(reference),
            "image_prompt_tokens": runs[variant][0]["prompt_tokens"],
        }
    calibration = {
        level: sum(a == b for a, b in zip(top1, reference, strict=True)) / len(reference)
        for level, top1 in runs[base][0].get("noise_top1", {}).items()
    }
    return {
        "device": device,
        "memory": "torch.cuda allocated bytes" if device.startswith("cuda") else "resident set size",
        "runs": runs_per_variant,
        "num_crops": num_crops,
        "targets": TARGETS,
        "variants": rows,
        "calibration": {
            "noise_agreement": calibration,
            "int8_weight_error": runs[base][0].get("int8_weight_error"),
        },
    }


def section_quant(bench: Any) -> dict[str, Any]:
    """The ``quant`` section of ``python -m phi3vision.bench`` (use ``--size wide``): the same
    measurements on the bench's checkpoint, with its ``--runs``, num_crops, max_new_tokens
    and device (a GPU's rows on cuda, a CPU's elsewhere)."""
    s = bench.settings
    device = str(s.device) if str(s.device).startswith("cuda") else "cpu"
    return measure(Path(s.checkpoint), s.runs, s.num_crops, s.max_new_tokens, bench.log, device)


def render(result: dict[str, Any]) -> str:
    def mib(value: float) -> str:
        return f"{value / 2**20:,.0f}"

    reference = next(iter(result["variants"]))
    lines = [
        f"| variant | load adds (MiB) | x {reference} | decode tok/s | x {reference} | top-1 agreement "
        "| call peak (MiB) | plan (MiB) | plan error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["variants"].items():
        lines.append(
            f"| {name} | {mib(row['load_added_rss_bytes'])} | {row['rss_ratio']:.2f} "
            f"| {row['decode_tokens_per_s']:.1f} | {row['decode_speedup']:.2f} "
            f"| {row['top1_agreement']:.1%} | {mib(row['call_peak_added_rss_bytes'])} "
            f"| {mib(row['plan_total_bytes'])} | {row['plan_error']:+.1%} |"
        )
    calibration = result.get("calibration") or {}
    if calibration.get("noise_agreement"):
        lines += [
            "",
            "| float32 weights of the quantised layers | relative weight error | top-1 agreement |",
            "|---|---|---|",
        ]
        for level, agreement in calibration["noise_agreement"].items():
            lines.append(f"| + Gaussian noise | {float(level):.1%} | {agreement:.1%} |")
        error = calibration.get("int8_weight_error")
        quantized = result["variants"].get("float32 + int8")
        if error is not None and quantized is not None:
            lines.append(f"| int8 (the row above) | {error:.2%} | {quantized['top1_agreement']:.1%} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m phi3vision.bench_quant", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", type=Path, help="a checkpoint directory (default: random wide weights)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the random checkpoint (2)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per scheme (3)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for bf16/int8/int4/nf4 (cpu)")
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)  # internal, with --probe
    parser.add_argument("--num-crops", type=int, default=4, help="num_crops of the image call (4)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per decode run (32)")
    parser.add_argument("--quantization", help=argparse.SUPPRESS)  # internal, with --probe
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one fresh-process probe
    return parser


def _log(message: str) -> None:
    print(f"[bench_quant] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.probe is not None:
        found = probe(args.probe, args.quantization, args.dtype, args.num_crops, args.new_tokens, args.device)
        print(json.dumps(found))
        return 0
    if args.model is not None:
        result = measure(args.model, args.runs, args.num_crops, args.new_tokens, _log, args.device)
    else:
        from .testing.checkpoint import tiny_checkpoint

        with tempfile.TemporaryDirectory(prefix="phi3vision-quant-") as temporary:
            _log(f"writing a random-weight checkpoint: width 3072, {args.layers} layers")
            path = tiny_checkpoint(
                Path(temporary) / "checkpoint", num_hidden_layers=args.layers, **WIDE_SIZES
            )
            result = measure(path, args.runs, args.num_crops, args.new_tokens, _log, args.device)
    print(render(result))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
