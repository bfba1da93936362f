"""The Dask and Spark recipes of docs/scaling.md run as written, on the tiny checkpoint
(``PHI3VISION_MODEL``) and a few images in ``photos/``, each in a fresh interpreter.

Skipped when dask (or pyspark and Java) is not installed; they are not phi3vision extras.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import GOLDEN, GOLDEN_CHECKPOINT

ROOT = Path(__file__).parent.parent
PAGE = ROOT / "docs" / "scaling.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
PHOTOS = ("square336.png", "team_a.png", "chart_wide.png")


def recipe(engine: str) -> str:
    """The page's Python block that imports ``engine``, with fewer new tokens."""
    blocks = [b for b in BLOCK.findall(PAGE.read_text()) if re.search(rf"^(from|import) {engine}\b", b, re.M)]
    assert len(blocks) == 1, f"one {engine} recipe expected in {PAGE.name}"
    return blocks[0].replace('"max_new_tokens": 64', '"max_new_tokens": 4')


def run_recipe(engine: str, tmp_path: Path) -> list[str]:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(GOLDEN / "images" / name, photos / name)
    script = tmp_path / f"{engine}_recipe.py"
    script.write_text(recipe(engine), encoding="utf-8")
    env = {**os.environ, "PHI3VISION_MODEL": str(GOLDEN_CHECKPOINT), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if line.startswith("photos/")]


@pytest.mark.skipif(importlib.util.find_spec("dask") is None, reason="dask is not installed")
def test_dask_recipe(tmp_path: Path) -> None:
    lines = run_recipe("dask", tmp_path)
    assert [line.split()[:3] for line in lines] == [[f"photos/{n}", "done", "4"] for n in sorted(PHOTOS)]


@pytest.mark.skipif(
    importlib.util.find_spec("pyspark") is None or shutil.which("java") is None,
    reason="pyspark or Java is not installed",
)
def test_spark_recipe(tmp_path: Path) -> None:
    lines = run_recipe("pyspark", tmp_path)
    assert [line.split()[:2] for line in lines] == [[f"photos/{n}", "done"] for n in sorted(PHOTOS)]
