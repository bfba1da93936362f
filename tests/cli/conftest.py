"""Helpers for the command-line tests: every command runs end to end on the tiny random-weight
checkpoint (outputs are gibberish but deterministic), on CPU, with few tokens and one crop."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from phi3vision.cli import main

from ..conftest import GOLDEN, GOLDEN_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]
IMAGES = GOLDEN / "images"
MODEL_ARGS = [
    "--model",
    str(GOLDEN_CHECKPOINT),
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--num-crops",
    "1",
    "--max-new-tokens",
    "6",
]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run ``main(argv)`` in-process; returns the exit code and what went to stdout/stderr."""

    def run(*argv: str, stdin: bytes | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> Run:
        capsys.readouterr()
        if stdin is not None:
            assert monkeypatch is not None
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def python_m(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python -m phi3vision ARGS`` in a fresh process, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "phi3vision", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
        **kwargs,
    )


def write_truncated_png(path: Path) -> Path:
    """A PNG cut short: the header is fine, the pixel data is not (a typical broken download)."""
    data = (IMAGES / "tiny.png").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line must be whole JSON: a crash-safe writer never leaves anything else behind."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "the file must end with a whole line"
    return [json.loads(line) for line in text.splitlines()]
