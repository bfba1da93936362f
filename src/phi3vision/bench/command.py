"""The command line: arguments, the run of the chosen sections, the report on stdout."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .harness import DEFAULT_NUM_CROPS, MODEL_SIZES, Bench, Settings
from .measure import RssMeter, machine_info, size_text
from .memory import probe
from .report import render_markdown
from .sections import ALL_SECTIONS, SECTION_FUNCTIONS, SECTIONS

DEFAULT_IMAGE_SIZES = "336x336,1024x768,1920x1080,4000x3000"
DEFAULT_CROPS = "1,4,16"


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
    unknown = [name for name in chosen if name not in ALL_SECTIONS]
    if unknown or not chosen:
        choices = ", ".join(ALL_SECTIONS)
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; choose from {choices}")
    return [name for name in ALL_SECTIONS if name in chosen]


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
        help="random-weight model size: tiny, mid (minutes on a small CPU), wide (the real language-model "
        "width, 2 layers: the quant section) or full (the real 4.2B shapes)",
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
        "--sections",
        type=parse_sections,
        default=list(SECTIONS),
        help=f"a subset of: {','.join(ALL_SECTIONS)} (default: all but quant)",
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
        from ..loading import open_checkpoint

        yield open_checkpoint(args.model).directory, str(args.model)
        return
    from ..testing.checkpoint import tiny_checkpoint

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
    from ..devices import choose_attn_implementation, choose_device, choose_dtype

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
            "image_size": size_text(args.image_size),
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
