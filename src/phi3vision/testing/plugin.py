"""pytest fixtures for code that uses phi3vision (registered through the ``pytest11`` entry point).

- ``fake_vision_model``: a fresh ``FakeVisionModel`` per test (no torch, milliseconds).
- ``tiny_vision_checkpoint``: the directory of a ``tiny_checkpoint()``, written once per session
  and removed when the session ends.
- ``tiny_vision_model``: that checkpoint loaded once per session on the CPU in float32: the
  real engine with random weights, for tests that must run the actual model code. It is
  shared by every test of the session, so do not close it.

Nothing heavy is imported here: pytest loads this module in every test session of an
environment where phi3vision is installed, so the imports happen inside the fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..model import VisionModel
    from .fake import FakeVisionModel


@pytest.fixture
def fake_vision_model() -> Iterator[FakeVisionModel]:
    """A fresh ``FakeVisionModel``; script it with ``fake_vision_model.script(...)``."""
    from .fake import FakeVisionModel

    model = FakeVisionModel()
    yield model
    model.close()


@pytest.fixture(scope="session")
def tiny_vision_checkpoint() -> Iterator[Path]:
    """A random-weight checkpoint in the real layout (default ``tiny_checkpoint`` sizes, seed 0),
    in a directory of the session's own (a test may change its files), removed at the end."""
    import tempfile

    from .checkpoint import tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="phi3vision-tiny-session-") as directory:
        yield tiny_checkpoint(Path(directory) / "checkpoint", seed=0)


@pytest.fixture(scope="session")
def tiny_vision_model(tiny_vision_checkpoint: Path) -> Iterator[VisionModel]:
    """``VisionModel.from_pretrained(tiny_vision_checkpoint, device="cpu", dtype="float32")``."""
    from ..model import VisionModel

    model = VisionModel.from_pretrained(tiny_vision_checkpoint, device="cpu", dtype="float32")
    yield model
    model.close()
