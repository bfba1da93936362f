"""``FakeVisionModel``: ``VisionModel`` itself, over a ``ScriptedEngine`` instead of weights.

Code that uses phi3vision can be tested with it in milliseconds and without torch. Being the
real front end, it checks inputs, counts tokens, stops (stop tokens, stop strings,
``max_new_tokens``), streams and batches exactly like the real model; only the answers come
from a script (see ``phi3vision.testing.script``), and every generation is recorded.

What it cannot do: ``logits`` and ``module`` raise ``FakeNotSupportedError`` (there are no
weights), and ``encode`` imports torch when called (it builds the real model inputs). Timings
come from a simulated clock (``tokens_per_second``); nothing sleeps.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer

from ..engine.scripted import FakeNotSupportedError, ScriptedAnswerError, ScriptedEngine
from ..errors import OptionsError
from ..images import ImagePolicy
from ..limits import RequestLimits
from ..load_options import LoadOptions
from ..model import GenerationStream, VisionModel
from ..processing.processor import Processor
from ..processing.tokenization import PromptTokenizer
from .script import FakeCall, Script, ScriptItem

FAKE_MODEL_ID = "phi3vision-fake"
DEFAULT_CONTEXT_LENGTH = 131072
"""``max_position_embeddings`` of the real checkpoints, so the fake accepts what they accept."""
DEFAULT_NUM_CROPS = 16
"""The real checkpoints' ``preprocessor_config.json`` value."""

FakeGenerationStream = GenerationStream
"""The fake's streams are the real ``GenerationStream`` (the name is kept for older tests)."""


@functools.lru_cache(maxsize=1)
def packaged_tokenizer() -> PromptTokenizer:
    """The real Phi-3-vision tokenizer, shipped with the testing kit (read once per process)."""
    data = resources.files("phi3vision.testing").joinpath("data").joinpath("tokenizer.json")
    return PromptTokenizer(Tokenizer.from_str(data.read_text(encoding="utf-8")))


class FakeVisionModel(VisionModel):
    """A ``VisionModel`` for tests: the same front end, scripted answers.

    ``responses`` is a list (answers in order), a dict (by task name or prompt substring) or a
    callable ``(FakeCall) -> answer``; ``default`` answers whatever the script does not. See
    ``phi3vision.testing.script`` for the rules. ``fake.calls`` records every generation.
    """

    def __init__(
        self,
        responses: Script | None = None,
        *,
        default: ScriptItem | None = None,
        model_id: str = FAKE_MODEL_ID,
        revision: str | None = None,
        num_crops: int = DEFAULT_NUM_CROPS,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        image_policy: ImagePolicy | None = None,
        limits: RequestLimits | None = None,
        tokens_per_second: float = 100.0,
    ) -> None:
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
            raise OptionsError(f"context_length must be an int >= 2, got {context_length!r}")
        if (
            isinstance(tokens_per_second, bool)
            or not isinstance(tokens_per_second, (int, float))
            or not 0 < tokens_per_second < math.inf
        ):
            raise OptionsError(f"tokens_per_second must be a positive number, got {tokens_per_second!r}")
        processor = Processor(packaged_tokenizer(), num_crops=num_crops)
        self.tokens_per_second = float(tokens_per_second)
        """Simulated decoding speed: each token after the first takes ``1 / tokens_per_second``."""
        self._scripted = ScriptedEngine(
            processor.tokenizer,
            model_id=str(model_id),
            revision=revision,
            context_length=context_length,
            tokens_per_second=lambda: self.tokens_per_second,
            reasons=_reasons(LoadOptions()),
        )
        super().__init__(self._scripted, processor, image_policy=image_policy, limits=limits)
        self.script(responses, default=default)

    @classmethod
    def load(cls, name_or_path: str | Path, options: LoadOptions) -> FakeVisionModel:
        """A fake in place of a loaded checkpoint, for code under test that loads its own model:
        ``monkeypatch.setattr(VisionModel, "from_pretrained", FakeVisionModel.from_pretrained)``.
        Nothing is read or downloaded; the name (by default, as for ``VisionModel``,
        ``$PHI3VISION_MODEL`` or the 128k model) becomes the fake's ``model_id``, and the other
        settings are kept in ``info`` but change nothing."""
        model = cls(
            model_id=str(name_or_path),
            revision=options.revision,
            num_crops=DEFAULT_NUM_CROPS if options.num_crops is None else options.num_crops,
            image_policy=options.image_policy,
            limits=options.limits,
        )
        engine = model._scripted
        engine.info = engine.info.model_copy(update={"reasons": _reasons(options)})
        engine.reuse_prefix = options.reuse_prefix and not options.compile
        return model

    # -- test-side API --------------------------------------------------------------------

    def script(
        self, responses: Script | None = None, *, default: ScriptItem | None = None
    ) -> FakeVisionModel:
        """Add answers: a list extends the queue, a dict adds routes, a callable becomes the
        responder; ``default`` replaces the default answer. Returns the model, for chaining."""
        engine = self._scripted
        with engine.lock:
            if responses is not None:
                engine.script.add(responses)
            if default is not None:
                engine.script.default = default
        return self

    @property
    def calls(self) -> list[FakeCall]:
        """Every generation asked so far, oldest first (a copy: safe to keep)."""
        with self._scripted.lock:
            return list(self._scripted.calls)

    @property
    def pending_responses(self) -> int:
        """Queued answers not used yet: a test can assert they were all consumed."""
        with self._scripted.lock:
            return len(self._scripted.script.queue)


def _reasons(options: LoadOptions) -> dict[str, str]:
    """``info.reasons``: what was asked for, and that a fake honours none of it."""
    return {
        "device": f"fake model: {options.device!r} was asked for, nothing runs on a device",
        "dtype": f"fake model: {options.dtype!r} was asked for, there are no weights",
        "attn_implementation": (
            f"fake model: {options.attn_implementation!r} was asked for, no attention runs"
        ),
    }


__all__ = [
    "FakeGenerationStream",
    "FakeNotSupportedError",
    "FakeVisionModel",
    "ScriptedAnswerError",
    "packaged_tokenizer",
]
