"""Helpers for the ``phi3vision.jobs`` tests: jobs run with the fake model, which answers from
a script, so that these tests check the job (items, settings, the file, resume) and not a model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from phi3vision.testing import FakeVisionModel

from ..conftest import GOLDEN

IMAGES = GOLDEN / "images"


@pytest.fixture
def fake() -> FakeVisionModel:
    return FakeVisionModel(default="A scripted answer.")


@pytest.fixture
def two_images(tmp_path: Path) -> Path:
    """A folder with two images of the same content (two items that must stay apart)."""
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(IMAGES / "tiny.png", folder / "a.png")
    shutil.copy(IMAGES / "tiny.png", folder / "b.png")
    return folder
