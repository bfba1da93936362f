"""Testing kit for packages that use phi3vision.

- ``FakeVisionModel``: ``VisionModel``'s interface with scripted answers, no weights, no torch.
- ``tiny_checkpoint()``: writes a random-weight checkpoint in the real layout, which
  ``VisionModel.from_pretrained`` loads in about a second (this path uses torch).
- pytest fixtures ``fake_vision_model``, ``tiny_vision_model`` and ``tiny_vision_checkpoint``,
  registered automatically when phi3vision is installed (``phi3vision.testing.plugin``).

Names are imported lazily so that loading the pytest plugin costs next to nothing for test
suites that never use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FakeVisionModel": "fake",
    "FakeGenerationStream": "fake",
    "FakeNotSupportedError": "fake",
    "ScriptedAnswerError": "fake",
    "FakeCall": "script",
    "ImageRecord": "script",
    "TASK_NAMES": "script",
    "tiny_checkpoint": "checkpoint",
    "TINY_SIZES": "checkpoint",
}

__all__ = [
    "TASK_NAMES",
    "TINY_SIZES",
    "FakeCall",
    "FakeGenerationStream",
    "FakeNotSupportedError",
    "FakeVisionModel",
    "ImageRecord",
    "ScriptedAnswerError",
    "tiny_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'phi3vision.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .checkpoint import TINY_SIZES, tiny_checkpoint
    from .fake import FakeGenerationStream, FakeNotSupportedError, FakeVisionModel, ScriptedAnswerError
    from .script import TASK_NAMES, FakeCall, ImageRecord
