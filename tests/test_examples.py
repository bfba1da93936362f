"""The examples (the cookbook's three scenarios) run as written, pointed at a local checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import GOLDEN_CHECKPOINT

EXAMPLES = Path(__file__).parent.parent / "examples"
IMAGES = EXAMPLES / "images"
SMALL = ["--model", str(GOLDEN_CHECKPOINT), "--max-new-tokens", "4", "--num-crops", "1"]


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args, *SMALL], capture_output=True, text=True, timeout=300
    )


def test_describe_chart():
    done = _run("describe_chart.py", str(IMAGES / "chart.png"))
    assert done.returncode == 0, done.stderr
    assert "[4 tokens" in done.stdout


def test_book_cover_reports_an_unparseable_answer_cleanly():
    # The tiny random-weight checkpoint cannot write JSON: the example says so and exits 1.
    done = _run("book_cover.py", str(IMAGES / "book_cover.png"))
    assert done.returncode == 1
    assert "no BookInfo" in done.stderr
    assert "Traceback" not in done.stderr


def test_compare_photos():
    done = _run("compare_photos.py", str(IMAGES / "team_trophies.jpg"), str(IMAGES / "team_celebrating.webp"))
    assert done.returncode == 0, done.stderr
    comparison = json.loads(done.stdout[done.stdout.index("{") :])
    assert comparison["num_images"] == 2
    assert comparison["usage"]["completion_tokens"] == 4
