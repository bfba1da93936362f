"""Constrained decoding: answers that match a JSON schema, a regex or a list of choices by
construction.

This package is torch-free at import: ``GenerationOptions`` checks its constraint fields here,
and the fake model validates scripted answers with ``answer_problem``. The grammar backend
(xgrammar, the ``grammar`` extra) is only imported by ``constraints.masking``, when a
constrained call is decoded.
"""

from __future__ import annotations

from .spec import (
    CONSTRAINED_STOP_TOKEN_IDS,
    GRAMMAR_EXTRA,
    Constraint,
    answer_problem,
    backend_available,
    check_constraint_options,
    constraint_of,
    require_backend,
)

__all__ = [
    "CONSTRAINED_STOP_TOKEN_IDS",
    "GRAMMAR_EXTRA",
    "Constraint",
    "answer_problem",
    "backend_available",
    "check_constraint_options",
    "constraint_of",
    "require_backend",
]
