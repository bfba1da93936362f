"""The example of docs/testing.md runs as written: its package and its test module are copied
into a fresh directory and collected by pytest there, as a downstream project would run them
(the fixtures come from the installed plugin, not from this repository's conftest files)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def test_the_documented_downstream_tests_pass(tmp_path: Path) -> None:
    package, tests = BLOCK.findall((ROOT / "docs" / "testing.md").read_text(encoding="utf-8"))[:2]
    assert package.startswith("# bookshelf.py") and tests.startswith("# test_bookshelf.py")
    (tmp_path / "bookshelf.py").write_text(package, encoding="utf-8")
    (tmp_path / "test_bookshelf.py").write_text(tests, encoding="utf-8")
    # The fake-model tests only: the real-engine one is the sample app's, tested alongside.
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not real_engine", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "3 passed, 1 deselected" in completed.stdout
