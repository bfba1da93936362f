"""Moved to ``phi3vision.engine.caches``; kept importable under its old name."""

from __future__ import annotations

from .engine.caches import FeatureCache, PrefixCache, PrefixEntry, image_key, reusable_length

__all__ = ["FeatureCache", "PrefixCache", "PrefixEntry", "image_key", "reusable_length"]
