"""The ``quant`` section (opt-in: ``--sections quant``, best with ``--size wide``): float32
against bfloat16 and int8 loading, each in fresh processes. The measurements live in
``phi3vision.bench_quant`` (also runnable alone: ``python -m phi3vision.bench_quant``)."""

from __future__ import annotations

from ..bench_quant import render, section_quant
from .harness import Section

SECTION = Section("quant", "Quantised loading against float32 (fresh processes)", section_quant, render)
