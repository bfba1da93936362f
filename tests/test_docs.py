"""The Python examples in the README and the docs run as written, pointed at a local checkpoint
(``PHI3VISION_MODEL``) and with the example images in the working directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import GOLDEN_CHECKPOINT

ROOT = Path(__file__).parent.parent
PAGES = [
    "README.md",
    "docs/quickstart.md",
    "docs/loading.md",
    "docs/prompts.md",
    "docs/results.md",
    "docs/errors.md",
]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _blocks(page: str) -> list[str]:
    return [match.group(1) for match in BLOCK.finditer((ROOT / page).read_text())]


# Each page runs in one fresh interpreter, each block in its own namespace. Generation lengths
# are capped: the defaults are long for a random-weight model on a CPU.
RUNNER = """
import sys, traceback
import phi3vision.options as options
options.GenerationOptions.model_fields["max_new_tokens"].default = 8
options.GenerationOptions.model_rebuild(force=True)
for number, code in enumerate(BLOCKS, start=1):
    try:
        exec(compile(code, f"block {number}", "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        sys.exit(f"block {number} failed")
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("docs")
    for image in (ROOT / "examples" / "images").iterdir():
        if image.suffix in {".png", ".jpg", ".webp"}:
            shutil.copy(image, directory / image.name)
    return directory


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(workdir: Path, page: str):
    blocks = _blocks(page)
    assert blocks, f"{page} has no Python example"
    env = {**os.environ, "PHI3VISION_MODEL": str(GOLDEN_CHECKPOINT)}
    script = f"BLOCKS = {blocks!r}\n{RUNNER}"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{page}: {done.stderr[-3000:]}"
