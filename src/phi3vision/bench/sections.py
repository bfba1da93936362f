"""The sections, in the order they run: the one list to extend with a new section.

compile loads its own model after the others are done with the default one, so that two
copies of the weights are never held at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import batches, chat, compiled, decoding, loading, memory, preprocess, quant, vision
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

OPT_IN: tuple[Section, ...] = (quant.SECTION,)
"""Sections that run only when ``--sections`` names them (quant loads three models per run)."""

SECTIONS: tuple[str, ...] = tuple(section.name for section in ALL)
"""Every default section's name, in the order they run."""
ALL_SECTIONS: tuple[str, ...] = (*SECTIONS, *(section.name for section in OPT_IN))
"""What ``--sections`` accepts."""

SECTION_TITLES: dict[str, str] = {section.name: section.title for section in (*ALL, *OPT_IN)}
SECTION_FUNCTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {s.name: s.measure for s in (*ALL, *OPT_IN)}
SECTION_RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {s.name: s.render for s in (*ALL, *OPT_IN)}
