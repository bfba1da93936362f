"""What the commands share: loading the model from the options, reading IMAGE arguments,
printing results. Heavy imports stay inside the functions (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ImageError

if TYPE_CHECKING:
    from ..model import GenerationStream, VisionModel
    from ..results import Generation


def load_model(args: argparse.Namespace) -> VisionModel:
    """The model named by the common options. A note goes to stderr on a terminal only, so
    that scripts reading stderr see nothing but errors."""
    from ..loading import default_model
    from ..model import VisionModel

    name = args.model or default_model()
    if sys.stderr.isatty():
        print(f"phi3vision: loading {name} ...", file=sys.stderr, flush=True)
    else:  # a download's progress bars are for a terminal, not for a log file
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    started = time.perf_counter()
    vm = VisionModel.from_pretrained(
        name,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn,
        num_crops=args.num_crops,
        revision=args.revision,
        quantization=args.quantization,
    )
    if verbose(args):
        info = vm.info
        note(
            f"phi3vision: loaded {info.model_id} in {time.perf_counter() - started:.2f} s "
            f"({info.num_parameters / 1e6:.1f}M parameters, {info.device}, {info.dtype}, "
            f"{info.attn_implementation})"
        )
    return vm


def verbose(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "verbose", False))


def report_run(args: argparse.Namespace, result: Generation, device: str) -> None:
    """With ``--verbose``: one line on stderr after a model call, with its tokens, timings,
    decode speed and the peak memory so far."""
    if not verbose(args):
        return
    usage, timings = result.usage, result.timings
    note(
        f"phi3vision: {usage.prompt_tokens} prompt tokens ({usage.image_tokens} image), "
        f"{usage.completion_tokens} new tokens; preprocess {timings.preprocess_s:.2f} s, "
        f"first token {timings.time_to_first_token_s:.2f} s, decode {timings.decode_s:.2f} s "
        f"({timings.tokens_per_second:.1f} tokens/s), total {timings.total_s:.2f} s; "
        f"{peak_memory(device)}"
    )


def peak_memory(device: str) -> str:
    """The peak memory of the model's device so far: the CUDA allocator's on a GPU, the
    process's resident set elsewhere (what the operating system saw)."""
    if device.startswith("cuda"):
        import torch

        return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB"
    try:
        import resource
    except ImportError:  # not on Windows
        return "peak memory unknown on this platform"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
    return f"peak process memory {peak_bytes / 1e9:.2f} GB"


def image_inputs(names: Sequence[str]) -> list[tuple[str, Any]]:
    """``(label, source)`` for each IMAGE argument: ``-`` becomes the bytes of stdin (the
    parser allows it once, and not in a chat), a path or URL stays as it is. Local files are
    checked here, before the model is loaded, so that a typo is reported at once and not
    after a long load."""
    inputs: list[tuple[str, Any]] = []
    for name in names:
        if name == "-":
            inputs.append(("<stdin>", sys.stdin.buffer.read()))
        else:
            check_local_file(name)
            inputs.append((name, name))
    return inputs


def check_local_file(name: str) -> None:
    """Fail early, naming the file, when a local image does not exist or is a folder."""
    from ..images import is_remote  # the loader's own classifier: URL, data URI or path

    if is_remote(name):
        return
    if not os.path.exists(name):
        raise ImageError(f"image '{name}': file not found")
    if os.path.isdir(name):
        raise ImageError(
            f"image '{name}': is a directory, not an image file; for the images in a folder, "
            f"use batch: phi3vision batch describe {shlex.quote(name)} --out results.jsonl"
        )


def print_json(result: Generation) -> None:
    print(result.model_dump_json(), flush=True)


def print_stream(stream: GenerationStream) -> Generation:
    """Write the text as it is generated, then end the line; return the finished result."""
    text = ""
    for delta in stream:
        sys.stdout.write(delta)
        sys.stdout.flush()
        text += delta
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    return stream.result


def print_header(label: str) -> None:
    """Separates the answers when one command describes several images (like ``head``)."""
    print(f"==> {label} <==", flush=True)


def report(exc: BaseException, debug: bool) -> None:
    """An error that does not stop the command (one of several images): same format as main's."""
    if debug:
        traceback.print_exception(exc)
    print(f"phi3vision: error: {exc}", file=sys.stderr, flush=True)


def note(*lines: str) -> None:
    """Messages for the person at the terminal, kept off stdout (which holds the answers)."""
    for line in lines:
        print(line, file=sys.stderr, flush=True)


def debug_flag(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False))
