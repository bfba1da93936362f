"""phi3vision: local inference with Microsoft's Phi-3-vision models, natively on transformers.

    >>> import phi3vision
    >>> vm = phi3vision.VisionModel.from_pretrained()          # doctest: +SKIP
    >>> vm.describe("chart.png").text                           # doctest: +SKIP

Public names are imported lazily: ``import phi3vision`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "VisionModel": "model",
    "ModelInfo": "model",
    "TokenCount": "model",
    "GenerationStream": "model",
    "Prompt": "prompt",
    "GenerationOptions": "options",
    "Generation": "results",
    "Description": "results",
    "TextExtraction": "results",
    "Comparison": "results",
    "Answer": "results",
    "Usage": "results",
    "Timings": "results",
    "ModelRef": "results",
    "Extraction": "tasks",
    "TaskPrompts": "tasks",
    "ImagePolicy": "images",
    "RequestLimits": "limits",
    "load_image": "images",
    "Encoding": "processing.processor",
    "DEFAULT_MODEL_ID": "loading",
    "plan_memory": "memory",
    "MemoryPlan": "memory",
    "MemoryWarning": "memory",
    "Phi3VisionError": "errors",
    "ImageError": "errors",
    "ImageTooLargeError": "errors",
    "PromptError": "errors",
    "ContextLengthError": "errors",
    "OptionsError": "errors",
    "CheckpointError": "errors",
    "HubUnavailableError": "errors",
    "DeviceError": "errors",
    "OutOfMemoryError": "errors",
    "ModelClosedError": "errors",
    "OutputParseError": "errors",
}

__all__ = [
    "DEFAULT_MODEL_ID",
    "Answer",
    "CheckpointError",
    "Comparison",
    "ContextLengthError",
    "Description",
    "DeviceError",
    "Encoding",
    "Extraction",
    "Generation",
    "GenerationOptions",
    "GenerationStream",
    "HubUnavailableError",
    "ImageError",
    "ImagePolicy",
    "ImageTooLargeError",
    "MemoryPlan",
    "MemoryWarning",
    "ModelClosedError",
    "ModelInfo",
    "ModelRef",
    "OptionsError",
    "OutOfMemoryError",
    "OutputParseError",
    "Phi3VisionError",
    "Prompt",
    "PromptError",
    "RequestLimits",
    "TaskPrompts",
    "TextExtraction",
    "Timings",
    "TokenCount",
    "Usage",
    "VisionModel",
    "__version__",
    "load_image",
    "plan_memory",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'phi3vision' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .errors import (
        CheckpointError,
        ContextLengthError,
        DeviceError,
        HubUnavailableError,
        ImageError,
        ImageTooLargeError,
        ModelClosedError,
        OptionsError,
        OutOfMemoryError,
        OutputParseError,
        Phi3VisionError,
        PromptError,
    )
    from .images import ImagePolicy, load_image
    from .limits import RequestLimits
    from .loading import DEFAULT_MODEL_ID
    from .memory import MemoryPlan, MemoryWarning, plan_memory
    from .model import GenerationStream, ModelInfo, TokenCount, VisionModel
    from .options import GenerationOptions
    from .processing.processor import Encoding
    from .prompt import Prompt
    from .results import Answer, Comparison, Description, Generation, ModelRef, TextExtraction, Timings, Usage
    from .tasks import Extraction, TaskPrompts
