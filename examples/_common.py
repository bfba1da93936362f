"""Command-line plumbing shared by the examples (not part of the library)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from phi3vision import Phi3VisionError

IMAGES = Path(__file__).resolve().parent / "images"
"""Local copies of the cookbook's images: the examples run offline by default."""

DEFAULT_MAX_NEW_TOKENS = 256
"""Enough for the cookbook's answers (a paragraph or two), without minutes of waiting on a CPU."""


def parser(description: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_argument(
        "images", nargs="*", help="image paths or URLs (default: the local copies in examples/images)"
    )
    cli.add_argument(
        "--cookbook-urls", action="store_true", help="use the cookbook's original images from the web"
    )
    cli.add_argument(
        "--model", default=None, help="Hub id or checkpoint directory (default: $PHI3VISION_MODEL)"
    )
    cli.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"stop after this many tokens (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    cli.add_argument("--num-crops", type=int, default=None)
    return cli


def images(args: argparse.Namespace, local: list[str], urls: list[str]) -> list[str]:
    """The images given on the command line, else the cookbook's (local copies or URLs)."""
    if args.images:
        return list(args.images)
    return urls if args.cookbook_urls else [str(IMAGES / name) for name in local]


def run(main: Callable[[], int]) -> None:
    """Run an example; the library's errors become one line on stderr and exit code 1."""
    try:
        code = main()
    except Phi3VisionError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        code = 1
    sys.exit(code)
