"""The argument parser and ``main``: turn a command line into a call, and errors into exit codes.

Exit codes: 0 success; 1 an error (message on stderr) or, for ``batch`` and several images,
some items failed; 2 a usage error (argparse's one-line reason); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence

from .. import __version__
from ..devices import ATTN_IMPLEMENTATIONS, DTYPES
from ..errors import OptionsError, Phi3VisionError
from ..loading import DEFAULT_MODEL_ID, MODEL_ENV_VAR
from ..quantization import SCHEMES as QUANTIZATION_SCHEMES
from ..tasks import TASKS
from . import batch, chat, commands, info, serve
from .common import report

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_EPILOG = """\
IMAGE is a file path, an http(s) URL, or - for image bytes on stdin.
Exit codes: 0 ok; 1 error, or some images/items failed; 2 usage error; 130 interrupted.
Run 'phi3vision COMMAND --help' for a command's options."""


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``, with a one-line reason."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _debug_parent() -> argparse.ArgumentParser:
    """``--debug`` after the command as well as before it. SUPPRESS keeps a subcommand from
    resetting a ``--debug`` given before the command to False."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    return parent


def _model_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="ID_OR_DIR",
        help=f"Hub model id or local checkpoint folder (default: ${MODEL_ENV_VAR}, else {DEFAULT_MODEL_ID})",
    )
    group.add_argument("--revision", help="Hub branch, tag or commit to pin")
    group.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    group.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES], help="weights' precision (default: auto)"
    )
    group.add_argument(
        "--attn",
        default="auto",
        choices=["auto", *ATTN_IMPLEMENTATIONS],
        help="attention implementation (default: auto)",
    )
    group.add_argument(
        "--num-crops",
        type=_positive_int,
        metavar="N",
        help="image crops; more reads finer detail but costs more tokens (default: the checkpoint's)",
    )
    group.add_argument(
        "--quantization",
        choices=QUANTIZATION_SCHEMES,
        help="language-model weights as int8 (CPU, CUDA), int4 or nf4 (CUDA) (default: none)",
    )
    parent.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="after loading and after each model call, print timings, tokens/s and peak memory to stderr",
    )
    return parent


def _generation_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("generation")
    group.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        metavar="N",
        help="stop after N new tokens (default: the library's default, 512)",
    )
    group.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=0.0,
        metavar="T",
        help="0 (default) answers greedily, the same every time; T > 0 samples at that temperature",
    )
    group.add_argument(
        "--top-p", type=float, metavar="P", help="nucleus sampling cut-off in (0, 1]; with --temperature > 0"
    )
    group.add_argument(
        "--seed", type=_non_negative_int, metavar="N", help="seed for sampling, to repeat a sampled answer"
    )
    return parent


def _json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json", action="store_true", help="print each result as one JSON line instead of streaming text"
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; importing it costs no torch."""
    parser = argparse.ArgumentParser(
        prog="phi3vision",
        description="Local inference with Microsoft's Phi-3-vision models.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    debug, json_out = _debug_parent(), _json_parent()
    model, generation = _model_parent(), _generation_parent()
    run_parents = [debug, json_out, model, generation]

    def add(
        name: str, help_text: str, parents: list[argparse.ArgumentParser], aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        sub = subcommands.add_parser(
            name,
            aliases=list(aliases),
            help=help_text,
            description=textwrap.fill(help_text, 80),
            parents=parents,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(parser=sub)
        return sub

    for name, help_text in (
        ("describe", "Describe images, one answer per image."),
        ("extract_text", "Read the text in images (OCR), one answer per image."),
    ):
        per_image = add(name, help_text, run_parents, TASKS[name].aliases)
        per_image.add_argument("images", nargs="+", metavar="IMAGE")
        per_image.set_defaults(handler=commands.run_per_image, task=name)

    compare = add("compare", "Say how two or more images differ (one answer).", run_parents)
    compare.add_argument("images", nargs="+", metavar="IMAGE", help="two or more images")
    compare.set_defaults(handler=commands.run_compare)

    ask = add("ask", "Ask one question about zero or more images.", run_parents)
    ask.add_argument("images", nargs="*", metavar="IMAGE")
    ask.add_argument("-q", "--question", required=True, help="the question")
    ask.add_argument("--system", help="a system message to put before the question")
    ask.add_argument(
        "--choices", metavar="A,B,...", help="the answer is exactly one of these (needs phi3vision[grammar])"
    )
    ask.set_defaults(handler=commands.run_ask)

    extract = add(
        "extract",
        "Extract a JSON object matching a JSON schema from each image, one line per image on stdout "
        "(decoding constrained by the schema; needs phi3vision[grammar]).",
        [debug, model, generation],
    )
    extract.add_argument("images", nargs="+", metavar="IMAGE")
    extract.add_argument("--schema", required=True, metavar="FILE", help="a JSON schema file (.json)")
    extract.set_defaults(handler=commands.run_extract)

    chat_parser = add(
        "chat",
        "Talk with the model, reading your messages from stdin. "
        "In the chat: /image PATH_OR_URL adds an image to your next message, /reset starts over, "
        "/quit (or end of input) leaves.",
        run_parents,
    )
    chat_parser.add_argument("images", nargs="*", metavar="IMAGE", help="images for the first message")
    chat_parser.add_argument("--system", help="a system message for the whole conversation")
    chat_parser.set_defaults(handler=chat.run_chat)

    info_parser = add(
        "info",
        "Show the environment and what 'auto' would choose (device, dtype, attention); loads no model.",
        [debug],
    )
    info_parser.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    info.add_arguments(info_parser)
    info_parser.set_defaults(handler=info.run_info)

    batch_parser = add(
        "batch",
        "Run a task over many images, writing one JSON line per image to --out. "
        "Exit code 1 when some images failed (they are recorded in the output).",
        [debug, model, generation],
    )
    batch_tasks = [spec for spec in TASKS.values() if spec.batch]
    batch_parser.add_argument(
        "task",
        choices=[name for spec in batch_tasks for name in (spec.name, *spec.aliases)],
        help=", ".join(spec.name + "".join(f" ({alias})" for alias in spec.aliases) for spec in batch_tasks),
    )
    batch_parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUTS",
        help="folders, glob patterns, .jsonl/.csv manifests or image files",
    )
    batch_parser.add_argument("--out", "-o", required=True, metavar="FILE", help="results file (JSON Lines)")
    batch_parser.add_argument("-q", "--question", help="the question for ask (a manifest item's own wins)")
    batch_parser.add_argument(
        "--schema", metavar="FILE", help="extract: the JSON schema file each line's 'value' matches"
    )
    batch_parser.add_argument("--recursive", "-r", action="store_true", help="look into subfolders too")
    batch_parser.add_argument(
        "--batch-size", type=_positive_int, default=4, metavar="N", help="images per model call (default: 4)"
    )
    mode = batch_parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip the items already in --out and append")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    batch_parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: run the items recorded as failed again (implies --resume)",
    )
    batch_parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    scale = batch_parser.add_argument_group("scaling out (pip install 'phi3vision[ray]')")
    scale.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where the model runs: in this process (default) or in Ray actors; the output is the same",
    )
    scale.add_argument(
        "--ray-address", metavar="ADDR", help="the Ray cluster to use (default: RAY_ADDRESS, or a local Ray)"
    )
    scale.add_argument(
        "--ray-actors", type=_positive_int, default=1, metavar="N", help="model replicas (default: 1)"
    )
    scale.add_argument(
        "--ray-gpus",
        type=_non_negative_float,
        default=0.0,
        metavar="G",
        help="GPUs per replica; 0.5 puts two on a card (default: 0)",
    )
    scale.add_argument(
        "--ray-cpus",
        type=_non_negative_float,
        default=None,
        metavar="C",
        help="CPUs per replica (default: 0.5, which leaves CPUs for reading the images)",
    )
    batch_parser.set_defaults(handler=batch.run_batch_command)

    serve_parser = add(
        "serve",
        "Serve the OpenAI chat API (POST /v1/chat/completions) over HTTP; needs phi3vision[server].",
        [debug, model],
    )
    serve.add_arguments(serve_parser, _positive_int, _non_negative_int)
    serve_parser.set_defaults(handler=serve.run_serve)
    return parser


def _prepare(args: argparse.Namespace) -> None:
    """Checks that need more than argparse, reported as usage errors (exit 2) before any slow
    work: generation options are validated here rather than after loading a model."""
    sub: argparse.ArgumentParser = args.parser
    if hasattr(args, "temperature"):
        from ..options import resolve_options

        fields: dict[str, object] = {}
        if args.max_new_tokens is not None:
            fields["max_new_tokens"] = args.max_new_tokens
        fields["temperature"] = args.temperature  # 0 is greedy, above 0 samples (GenerationOptions)
        if args.top_p is not None:
            fields["top_p"] = args.top_p
        if args.seed is not None:
            fields["seed"] = args.seed
        if getattr(args, "choices", None) is not None:
            fields["choices"] = args.choices.split(",")
        if getattr(args, "schema", None) is not None:
            if getattr(args, "task", "extract") != "extract":
                sub.error("--schema goes with the extract task")
            fields["json_schema"] = _read_schema(args.schema, sub)
        elif getattr(args, "task", None) == "extract":
            sub.error("the extract task needs --schema FILE")
        try:
            args.options = resolve_options(None, fields)
        except OptionsError as exc:
            sub.error(str(exc))
    if hasattr(args, "device"):  # info's --device only plans: its name is checked, not the machine
        _check_model_options(args, sub, loads=hasattr(args, "attn"))
    if args.command == "ask" and not args.question.strip():
        sub.error("-q/--question must not be empty")
    images = getattr(args, "images", [])
    if images.count("-") > 1:
        sub.error("stdin (-) can be read only once; give the other images as paths or URLs")
    if args.command == "chat" and "-" in images:
        sub.error("stdin holds the conversation in a chat; give images as paths or URLs")
    if args.command == "compare" and len(args.images) < 2:
        sub.error("compare needs at least two images")


def _read_schema(path: str, sub: argparse.ArgumentParser) -> dict[str, object]:
    """The JSON schema in ``path`` (a usage error if it cannot be read or is not an object)."""
    import json

    try:
        with open(path, encoding="utf-8") as file:
            schema = json.load(file)
    except (OSError, ValueError) as exc:
        sub.error(f"argument --schema: cannot read a JSON schema from {path}: {exc}")
    if not isinstance(schema, dict):
        sub.error(f"argument --schema: {path} holds no JSON object")
    return schema


_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::\d+)?")


def _check_model_options(args: argparse.Namespace, sub: argparse.ArgumentParser, loads: bool = True) -> None:
    """Model options that cannot work are usage errors before the model loads: a device name
    that is not one, too many crops, a dtype or attention the device cannot run. Whether a GPU
    is there at all is not a usage error (exit 1, as when loading)."""
    from ..processing.processor import MAX_NUM_CROPS

    if not _DEVICE.fullmatch(args.device):
        sub.error(f"argument --device: unknown device {args.device!r} (use auto, cpu, cuda, cuda:N or mps)")
    if args.num_crops is not None and args.num_crops > MAX_NUM_CROPS:
        sub.error(f"argument --num-crops: must be at most {MAX_NUM_CROPS}, got {args.num_crops}")
    attn = getattr(args, "attn", "auto")  # info's memory-plan options have no --attn
    if not loads or (args.dtype == "auto" and attn == "auto"):
        return  # nothing to check against the device: no need to import torch
    from ..devices import choose_attn_implementation, choose_device, choose_dtype
    from ..errors import DeviceError

    device, _ = choose_device(args.device)
    try:
        dtype, _ = choose_dtype(args.dtype, device)
        choose_attn_implementation(attn, device, dtype)
    except DeviceError as exc:
        sub.error(str(exc))


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    Errors the library raises on purpose (``Phi3VisionError``) and operating-system errors
    (a file that cannot be written) are user errors: one line ``phi3vision: error: ...`` and
    exit code 1, with the traceback only under ``--debug``. Anything else is a bug and keeps
    its traceback.
    """
    parser = build_parser()
    debug = False
    notices = _show_library_notices()
    try:
        args = parser.parse_args(argv)
        debug = bool(args.debug)
        _prepare(args)
        code: int = args.handler(args)
        return code
    except SystemExit as exc:
        return _exit_code(exc)
    except KeyboardInterrupt:
        print("\nphi3vision: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``phi3vision describe x | head -1``): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_ERROR
    except (Phi3VisionError, OSError) as exc:
        report(exc, debug)
        return EXIT_ERROR
    finally:
        logging.getLogger("phi3vision").removeHandler(notices)


def _show_library_notices() -> logging.Handler:
    """Show the library's log lines (such as a download's size and destination) on stderr in
    the CLI's ``phi3vision: ...`` form while one ``main`` runs; ``main`` removes the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("phi3vision: %(message)s"))
    logging.getLogger("phi3vision").addHandler(handler)
    return handler
