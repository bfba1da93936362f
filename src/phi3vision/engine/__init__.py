"""Engines: what turns prepared prompts into tokens. ``VisionModel`` is the one front end over
any engine (phi3vision.model); an engine knows nothing of prompts, results or stop strings.

- ``TorchEngine`` (engine/torch_engine.py): the checkpoint's weights on a device.
- ``ScriptedEngine`` (engine/scripted.py): scripted answers, no weights, no torch
  (``phi3vision.testing.FakeVisionModel``).

A new engine implements ``Engine`` and is given to ``VisionModel(engine, processor)``.
This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel

from ..prepared import PreparedPrompt
from ..results import ModelRef

if TYPE_CHECKING:
    from ..options import GenerationOptions
    from ..processing.processor import Encoding
    from ..results import Generation

Method = Literal["generate", "stream", "generate_batch"]

CLOSED_MESSAGE = "this VisionModel was closed; load a new one with VisionModel.from_pretrained"
STREAM_CLOSED_MESSAGE = "the model was closed while this stream was being read"


@dataclass(frozen=True)
class Request:
    """One prompt for an engine to run, and where it came from: the public ``method``, the
    ``task`` helper behind it (a name of the registry in phi3vision.tasks, or None), the
    ``schema`` of an extract task, and the item's position in a ``generate_batch`` call."""

    prompt: PreparedPrompt
    method: Method = "generate"
    task: str | None = None
    schema: type[BaseModel] | None = field(default=None, compare=False)
    batch_index: int | None = None


class EngineInfo(ModelRef):
    """What an engine runs, for ``VisionModel.info`` (which adds the front end's fields) and,
    through its ``ModelRef`` fields, every result's ``model``."""

    directory: str
    reasons: dict[str, str]
    num_parameters: int
    context_length: int
    """Positions of prompt plus new tokens the engine accepts."""


class Engine(Protocol):
    """Runs prepared requests and yields their new tokens, host-side.

    The front end validates and prepares every request (limits, context length) before it
    calls ``run``, and decides when each row has stopped (phi3vision.stopping).
    """

    info: EngineInfo

    @property
    def module(self) -> Any:
        """The torch module, where the engine has one; raises ``ModelClosedError`` once closed."""
        ...

    @property
    def device(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...

    reuse_prefix: bool
    """Whether a single prompt's KV cache is kept for the next call (phi3vision.engine.caches)."""

    def run(
        self, requests: Sequence[Request], options: GenerationOptions, *, chunk_size: int = 8
    ) -> Iterator[list[list[int]]]:
        """Start generating for ``requests`` at once (host-side preparation happens now) and
        return the chunks: ``chunk[row]`` holds that row's next token ids, at most
        ``chunk_size`` of them (the first chunk holds one, so that the time to the first token
        is measured). The caller closes the iterator once every row has stopped; it ends by
        itself after ``options.max_new_tokens`` tokens."""
        ...

    def batches(self, requests: Sequence[Request], max_new_tokens: int) -> list[list[int]]:
        """The indices of ``requests`` split into the groups that may run together."""
        ...

    def clock(self) -> float:
        """Seconds, for timings: a monotonic clock (a scripted engine simulates one)."""
        ...

    def logits(self, encoding: Encoding) -> Any:
        """Float32 logits ``(1, L, vocab)`` of one forward pass over a whole prompt."""
        ...

    @property
    def prefix_reused_tokens(self) -> int:
        """Prompt positions taken from an earlier call's KV cache instead of prefilled."""
        ...

    def finished(self, request: Request, result: Generation) -> None:
        """Told each request's result once the front end has made it (a scripted engine
        records it; the real one has nothing to do)."""
        ...

    def clear_caches(self) -> None: ...

    def close(self) -> None:
        """Free what the engine holds; later calls raise ``ModelClosedError``."""
        ...


__all__ = ["CLOSED_MESSAGE", "STREAM_CLOSED_MESSAGE", "Engine", "EngineInfo", "Method", "Request"]
