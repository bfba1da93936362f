"""What the commands share: loading the model from the options, reading IMAGE arguments,
printing results. Heavy imports stay inside the functions (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ImageError

if TYPE_CHECKING:
    from ..model import GenerationStream, VisionModel
    from ..results import Generation

_REMOTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|data:)", re.IGNORECASE)


def load_model(args: argparse.Namespace) -> VisionModel:
    """The model named by the common options. A note goes to stderr on a terminal only, so
    that scripts reading stderr see nothing but errors."""
    from ..load_options import LoadOptions
    from ..loading import default_model
    from ..model import VisionModel

    name = args.model or default_model()
    options = LoadOptions.of(
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn,
        num_crops=args.num_crops,
        revision=args.revision,
    )
    if sys.stderr.isatty():
        print(f"phi3vision: loading {name} ...", file=sys.stderr, flush=True)
    return VisionModel.load(name, options)


def is_remote(text: str) -> bool:
    return _REMOTE.match(text) is not None


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
    if is_remote(name):
        return
    if not os.path.exists(name):
        raise ImageError(f"image '{name}': file not found")
    if os.path.isdir(name):
        raise ImageError(f"image '{name}': is a directory, not an image file")


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
