"""The ``phi3vision`` command line (also ``python -m phi3vision``).

Importing this package must stay fast so that ``phi3vision --help`` answers at once: torch,
transformers and the model code are imported inside the command functions, never here.
"""

from __future__ import annotations

from .app import build_parser, main

__all__ = ["build_parser", "main"]
