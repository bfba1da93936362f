"""The fake model, the testing package and the pytest plugin must work without torch: a
downstream test suite using only the fake should start in well under a second."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_SESSION = """
import sys
from PIL import Image
from pydantic import BaseModel

import phi3vision.testing as t
import phi3vision.testing.plugin
from phi3vision import Prompt

class BookInfo(BaseModel):
    title: str
    author: str

image = Image.new("RGB", (64, 48), "white")
fake = t.FakeVisionModel(['{"title": "ALONE", "author": "Morgan Maxwell"}'])
assert fake.extract(image, BookInfo) == BookInfo(title="ALONE", author="Morgan Maxwell")
assert fake.describe(image).usage.image_tokens > 0
stream = fake.stream(Prompt().user("Hi", images=[image]))
assert "".join(stream) == stream.result.text
assert fake.generate_batch(["a", ("<|image_1|>", [])])[1].finish_reason == "error"
assert fake.count_tokens("Hi").total > 0
assert len(fake.calls) == 4
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_fake_model_and_plugin_work_without_torch() -> None:
    completed = run_python(FAKE_SESSION)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_the_fake_model_tests_import_no_torch() -> None:
    """Run the fake's own test modules in a fresh interpreter and look for torch afterwards."""
    modules = ["tests/testing/test_fake_model.py", "tests/testing/test_interface.py"]
    code = (
        "import sys, pytest\n"
        f"code = pytest.main(['-q', '-p', 'no:cacheprovider', *{modules!r}])\n"
        "torch_loaded = 'torch' in sys.modules\n"
        "print('TORCH LOADED' if torch_loaded else 'NO TORCH')\n"
        "sys.exit(int(code) or (3 if torch_loaded else 0))\n"
    )
    completed = run_python(code)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("NO TORCH")
    assert " passed" in completed.stdout
