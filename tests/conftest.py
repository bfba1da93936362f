from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from phi3vision import VisionModel

TESTS = Path(__file__).parent
GOLDEN = TESTS / "golden" / "phi3v-tiny"
GOLDEN_CHECKPOINT = GOLDEN / "checkpoint"
REFERENCE = TESTS / "reference"


@pytest.fixture(scope="session")
def golden_checkpoint() -> Path:
    return GOLDEN_CHECKPOINT


@pytest.fixture(scope="session")
def cpu_model() -> Iterator[VisionModel]:
    """The golden tiny checkpoint on CPU in float32 (sdpa), shared by the whole session."""
    from phi3vision import VisionModel

    with VisionModel.from_pretrained(GOLDEN_CHECKPOINT, device="cpu", dtype="float32") as model:
        yield model


@pytest.fixture
def prompt_and_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """extract() as without the grammar extra: JSON asked for in the prompt, retried when invalid."""
    import phi3vision.constraints

    monkeypatch.setattr(phi3vision.constraints, "backend_available", lambda: False)
