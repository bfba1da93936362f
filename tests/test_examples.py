"""The examples (the cookbook's three scenarios) run as written, offline, pointed at a local
checkpoint through PHI3VISION_MODEL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import GOLDEN_CHECKPOINT

EXAMPLES = Path(__file__).parent.parent / "examples"
IMAGES = EXAMPLES / "images"
SMALL = ["--max-new-tokens", "4", "--num-crops", "1"]


def _run(
    script: str, *args: str, model: Path = GOLDEN_CHECKPOINT, empty_cache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The example in a fresh process, offline (huggingface_hub may not make any request), with
    ``model`` as $PHI3VISION_MODEL, or with none and ``empty_cache`` as the Hugging Face cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PHI3VISION_"))}
    env["HF_HUB_OFFLINE"] = "1"
    if empty_cache is None:
        env["PHI3VISION_MODEL"] = str(model)
    else:
        env["HF_HOME"] = str(empty_cache)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("script", ["describe_chart.py", "book_cover.py", "compare_photos.py"])
def test_no_arguments_run_offline_on_the_local_images(script: str):
    done = _run(script)
    assert "Traceback" not in done.stderr
    if script == "book_cover.py":
        # The random-weight checkpoint cannot write JSON: the example says so and exits 1.
        assert done.returncode == 1 and "no BookInfo" in done.stderr
    else:
        assert done.returncode == 0, done.stderr


def test_describe_chart():
    done = _run("describe_chart.py", str(IMAGES / "chart.png"), *SMALL)
    assert done.returncode == 0, done.stderr
    assert "[4 tokens" in done.stdout


def test_compare_photos():
    photos = [str(IMAGES / "team_trophies.jpg"), str(IMAGES / "team_celebrating.webp")]
    done = _run("compare_photos.py", *photos, *SMALL)
    assert done.returncode == 0, done.stderr
    comparison = json.loads(done.stdout[done.stdout.index("{") :])
    assert comparison["num_images"] == 2
    assert comparison["usage"]["completion_tokens"] == 4


def test_the_default_max_new_tokens_is_sensible():
    done = _run("describe_chart.py", "--help")
    assert done.returncode == 0 and "(default: 256)" in done.stdout


def test_cookbook_urls_flag_selects_the_web_images(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import _common

    local = _common.parser("").parse_args([])
    assert _common.images(local, ["chart.png"], ["https://example.org/chart.png"]) == [
        str(IMAGES / "chart.png")
    ]
    web = _common.parser("").parse_args(["--cookbook-urls"])
    assert _common.images(web, ["chart.png"], ["https://example.org/chart.png"]) == [
        "https://example.org/chart.png"
    ]
    assert (IMAGES / "chart.png").is_file()


@pytest.mark.parametrize("image", ["http://127.0.0.1:9/chart.png", None])
def test_library_errors_are_one_line(image: str | None, tmp_path: Path):
    """An image that cannot be fetched, or no checkpoint offline (the Hub model is not cached):
    one line naming the problem, exit 1, no traceback."""
    if image is not None:
        done = _run("describe_chart.py", image, *SMALL)
    else:
        done = _run("describe_chart.py", *SMALL, empty_cache=tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("describe_chart.py: error: ")
