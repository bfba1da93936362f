"""Moved to ``phi3vision.engine.decoding``; kept importable under its old name."""

from __future__ import annotations

from .engine.decoding import (
    StaticDecoder,
    TokenChooser,
    decode_steps,
    left_padded_positions,
    new_cache,
)

__all__ = ["StaticDecoder", "TokenChooser", "decode_steps", "left_padded_positions", "new_cache"]
