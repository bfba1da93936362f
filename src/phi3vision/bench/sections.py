"""The sections, in the order they run: the one list to extend with a new section.

compile loads its own model after the others are done with the default one, so that two
copies of the weights are never held at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import batches, chat, compiled, decoding, loading, memory, preprocess, vision
from .harness import Bench, Section

ALL: tuple[Section, ...] = (
    preprocess.SECTION,
    vision.SECTION,
    decoding.PREFILL,
    decoding.DECODE,
    batches.SECTION,
    chat.SECTION,
    memory.SECTION,
    compiled.SECTION,
    loading.SECTION,
)

SECTIONS: tuple[str, ...] = tuple(section.name for section in ALL)
"""Every section's name, in the order they run."""

SECTION_TITLES: dict[str, str] = {section.name: section.title for section in ALL}
SECTION_FUNCTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {s.name: s.measure for s in ALL}
SECTION_RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {s.name: s.render for s in ALL}
