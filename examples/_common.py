"""Command-line plumbing shared by the examples (not part of the library)."""

from __future__ import annotations

import argparse


def parser(description: str, images: list[str]) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(description=description)
    cli.add_argument(
        "images", nargs="*", default=images, help="image paths or URLs (default: the cookbook's)"
    )
    cli.add_argument(
        "--model", default=None, help="Hub id or checkpoint directory (default: $PHI3VISION_MODEL)"
    )
    cli.add_argument("--max-new-tokens", type=int, default=1000)
    cli.add_argument("--num-crops", type=int, default=None)
    return cli
