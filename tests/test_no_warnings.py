"""A plain call prints no warnings: the Python API and the CLI run with every warning an error.

In fresh processes, so that warnings raised once at import (and Python's once-per-place
de-duplication) cannot hide behind earlier tests.
"""

from __future__ import annotations

import subprocess
import sys

from .conftest import GOLDEN, GOLDEN_CHECKPOINT

IMAGE = GOLDEN / "images" / "tiny.png"

_API_CALLS = f"""
from phi3vision import GenerationOptions, VisionModel

options = GenerationOptions(max_new_tokens=3)
prompt = "<|user|>\\n<|image_1|>\\nWhat is this?<|end|>\\n<|assistant|>\\n"
with VisionModel.from_pretrained({str(GOLDEN_CHECKPOINT)!r}, device="cpu", num_crops=1) as vm:
    vm.generate(prompt, images=[{str(IMAGE)!r}], options=options)
    vm.generate(prompt, images=[{str(IMAGE)!r}], options=options)  # the warning came on every call
    stream = vm.stream(prompt, images=[{str(IMAGE)!r}], options=options)
    "".join(stream)
    text_only = "<|user|>\\nhi<|end|>\\n<|assistant|>\\n"
    vm.generate_batch([(prompt, [{str(IMAGE)!r}]), (text_only, [])], options=options)
    vm.describe({str(IMAGE)!r}, options=options)
print("ok")
"""


def _strict(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_the_python_api_warns_nothing() -> None:
    result = _strict("-c", _API_CALLS)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert "Warning" not in result.stderr


def test_the_cli_warns_nothing() -> None:
    args = ["--model", str(GOLDEN_CHECKPOINT), "--device", "cpu", "--num-crops", "1", "--max-new-tokens", "3"]
    result = _strict("-m", "phi3vision", "describe", str(IMAGE), *args)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    assert "Warning" not in result.stderr
