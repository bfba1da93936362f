"""Markdown helpers for the sections' tables: numbers without exponents, median (min–max)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def num(value: float | None) -> str:
    """A number with about three significant digits, never in exponent notation."""
    if value is None:
        return "n/a"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size == 0:
        return "0"
    return f"{value:.3g}"


def spread(figure: dict[str, Any] | None, scale: float = 1.0) -> str:
    """``median (min–max)`` of a stat, multiplied by ``scale`` (1000 for ms)."""
    if figure is None:
        return "n/a"
    return f"{num(figure['median'] * scale)} ({num(figure['min'] * scale)}–{num(figure['max'] * scale)})"


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f} MiB"


def spread_bytes(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return "n/a"
    return f"{mib(figure['median'])} ({mib(figure['min'])}–{mib(figure['max'])})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{num(value)}x"
