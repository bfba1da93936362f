"""``FakeVisionModel``: the public interface of ``VisionModel`` with scripted answers and no weights.

Code that uses phi3vision can be tested with it in milliseconds and without torch: the fake
checks its inputs exactly like the real model (the same functions raise the same errors), counts
prompt tokens with the real tokenizer and image-token arithmetic, records every call, and
answers with scripted text (see ``phi3vision.testing.script``), honouring ``stop`` and
``max_new_tokens`` the way generation does.

What it cannot do: ``logits`` raises ``FakeNotSupportedError`` (there are no weights), and
``encode`` imports torch when called (it builds the real model inputs). Timings are simulated
from ``tokens_per_second``; nothing sleeps.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar

from pydantic import BaseModel
from tokenizers import Tokenizer

from ..constraints import answer_problem, constraint_of, require_backend
from ..errors import ContextLengthError, ModelClosedError, OptionsError, Phi3VisionError
from ..images import ImagePolicy, describe_source, image_fingerprint, load_images
from ..limits import RequestLimits, check_model_options
from ..loading import default_model
from ..model import ModelInfo, PromptInput, TokenCount
from ..options import GenerationOptions, resolve_options
from ..processing.processor import Processor, check_num_crops
from ..processing.tokenization import DEFAULT_STOP_TOKEN_IDS, PromptTokenizer
from ..prompt import batch_item, resolve_prompt
from ..results import FinishReason, Generation, ModelRef, Timings, Usage
from ..stopping import stop_conditions
from ..tasks import TaskMixin
from .script import FakeCall, ImageRecord, Method, ResponseScript, Script, ScriptItem

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..processing.processor import Encoding

P = ParamSpec("P")
R = TypeVar("R")

FAKE_MODEL_ID = "phi3vision-fake"
DEFAULT_CONTEXT_LENGTH = 131072
"""``max_position_embeddings`` of the real checkpoints, so the fake accepts what they accept."""
DEFAULT_NUM_CROPS = 16
"""The real checkpoints' ``preprocessor_config.json`` value."""


class FakeNotSupportedError(Phi3VisionError, NotImplementedError):
    """The fake model cannot do this (it has no weights); use the ``tiny_vision_model`` fixture."""


class ScriptedAnswerError(AssertionError):
    """A scripted answer breaks the call's constraint (``json_schema``, ``regex``, ``choices``):
    the real model could not have produced it, so the test is wrong. Not a ``Phi3VisionError``,
    so that no code under test handles it as a model error."""


@functools.lru_cache(maxsize=1)
def packaged_tokenizer() -> PromptTokenizer:
    """The real Phi-3-vision tokenizer, shipped with the testing kit (read once per process)."""
    data = resources.files("phi3vision.testing").joinpath("data").joinpath("tokenizer.json")
    return PromptTokenizer(Tokenizer.from_str(data.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class _Task:
    name: str
    schema: type[BaseModel] | None


_CURRENT_TASK: ContextVar[_Task | None] = ContextVar("phi3vision_fake_task", default=None)
"""Which task helper is running, so that ``generate`` can record and route by task name."""


def _as_task(
    name: str, helper: Callable[Concatenate[TaskMixin, P], R]
) -> Callable[Concatenate[FakeVisionModel, P], R]:
    """The shared ``TaskMixin`` helper, run with the task's name made known to ``generate``.

    ``functools.wraps`` keeps the helper's signature and docstring, so the fake's task helpers
    cannot drift from the real model's: they are the same code.
    """

    @functools.wraps(helper)
    def run(self: FakeVisionModel, /, *args: P.args, **kwargs: P.kwargs) -> R:
        schema = None
        if name == "extract":
            given = args[1] if len(args) > 1 else kwargs.get("schema")
            schema = given if isinstance(given, type) and issubclass(given, BaseModel) else None
        token = _CURRENT_TASK.set(_Task(name, schema))
        try:
            return helper(self, *args, **kwargs)
        finally:
            _CURRENT_TASK.reset(token)

    return run


class FakeVisionModel(TaskMixin):
    """A stand-in for ``VisionModel`` in tests: same methods, same results, scripted answers.

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
        image_policy, limits, _ = check_model_options(image_policy, limits)
        self.processor = Processor(packaged_tokenizer(), num_crops=num_crops)
        self.image_policy = image_policy
        self.limits = limits or RequestLimits()
        self.attn_implementation = "fake"
        self.tokens_per_second = float(tokens_per_second)
        self.reuse_prefix = True
        self.prefix_reused_tokens = 0
        """Always 0: a fake has no KV cache to reuse (``VisionModel`` counts reused positions)."""
        self._model_id = str(model_id)
        self._revision = revision
        self._context_length = context_length
        self._reasons = _reasons("auto", "auto", "auto")
        self._script = ResponseScript()
        self._calls: list[FakeCall] = []
        self._lock = threading.RLock()
        self._closed = False
        self.script(responses, default=default)

    # -- test-side API --------------------------------------------------------------------

    def script(
        self, responses: Script | None = None, *, default: ScriptItem | None = None
    ) -> FakeVisionModel:
        """Add answers: a list extends the queue, a dict adds routes, a callable becomes the
        responder; ``default`` replaces the default answer. Returns the model, for chaining."""
        with self._lock:
            if responses is not None:
                self._script.add(responses)
            if default is not None:
                self._script.default = default
        return self

    @property
    def calls(self) -> list[FakeCall]:
        """Every generation asked so far, oldest first (a copy: safe to keep)."""
        with self._lock:
            return list(self._calls)

    @property
    def pending_responses(self) -> int:
        """Queued answers not used yet: a test can assert they were all consumed."""
        with self._lock:
            return len(self._script.queue)

    # -- construction and lifecycle (as VisionModel) --------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str = "auto",
        num_crops: int | None = None,
        revision: str | None = None,
        image_policy: ImagePolicy | None = None,
        feature_cache_size: int = 16,
        reuse_prefix: bool = True,
        compile: bool = False,
        limits: RequestLimits | None = None,
    ) -> FakeVisionModel:
        """A fake in place of a loaded checkpoint, for code under test that loads its own model:
        ``monkeypatch.setattr(VisionModel, "from_pretrained", FakeVisionModel.from_pretrained)``.
        Nothing is read or downloaded; the name (by default, as for ``VisionModel``,
        ``$PHI3VISION_MODEL`` or the 128k model) becomes the fake's ``model_id``, and the other
        settings are kept in ``info`` but change nothing."""
        check_model_options(image_policy, limits, feature_cache_size)
        model = cls(
            model_id=default_model() if name_or_path is None else str(name_or_path),
            revision=revision,
            num_crops=DEFAULT_NUM_CROPS if num_crops is None else num_crops,
            image_policy=image_policy,
            limits=limits,
        )
        model._reasons = _reasons(device, dtype, attn_implementation)
        model.reuse_prefix = reuse_prefix and not compile
        return model

    @property
    def state(self) -> Literal["loaded", "closed"]:
        return "closed" if self._closed else "loaded"

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self._model_id,
            revision=self._revision,
            directory="",
            device="cpu",
            dtype="float32",
            attn_implementation=self.attn_implementation,
            reasons=dict(self._reasons),
            num_parameters=0,
            num_crops=self.processor.num_crops,
            context_length=self.context_length,
            state=self.state,
        )

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef(
            model_id=self._model_id,
            revision=self._revision,
            device="cpu",
            dtype="float32",
            attn_implementation=self.attn_implementation,
        )

    def close(self) -> None:
        """Like ``VisionModel.close``: further generation raises ``ModelClosedError``."""
        with self._lock:
            self._closed = True

    def clear_caches(self) -> None:
        """Nothing to forget: a fake keeps no image features or KV cache."""

    def __enter__(self) -> FakeVisionModel:
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FakeVisionModel({self._model_id!r}, calls={len(self._calls)}, state={self.state!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError(
                "this VisionModel was closed; load a new one with VisionModel.from_pretrained"
            )

    # -- inputs (the real model's checks, in the real model's order) ----------------------

    def _prepare(
        self, prompt: PromptInput, images: Sequence[Any] | None
    ) -> tuple[str, list[Any], list[Image.Image]]:
        text, sources = resolve_prompt(prompt, images)
        self.limits.check_images(len(sources))
        return text, sources, load_images(sources, self.image_policy)

    def encode(
        self, prompt: PromptInput, images: Sequence[Any] | None = None, *, num_crops: int | None = None
    ) -> Encoding:
        """The real model inputs (this imports torch: the pixel values are tensors)."""
        self._check_open()
        text, _, loaded = self._prepare(prompt, images)
        return self.processor.encode(text, loaded, num_crops)

    def count_tokens(
        self, prompt: PromptInput, images: Sequence[Any] | None = None, *, num_crops: int | None = None
    ) -> TokenCount:
        """Exactly the real model's count: the same tokenizer and image-token arithmetic."""
        self._check_open()
        text, _, loaded = self._prepare(prompt, images)
        ids = self.processor.token_ids(text, loaded, num_crops)
        image_tokens = sum(1 for i in ids if i < 0)
        return TokenCount(
            total=len(ids),
            text_tokens=len(ids) - image_tokens,
            image_tokens=image_tokens,
            context_length=self.context_length,
        )

    def logits(self, encoding: Encoding) -> torch.Tensor:
        """Not available: a fake has no weights. Raises ``FakeNotSupportedError``."""
        self._check_open()
        raise FakeNotSupportedError(
            "FakeVisionModel has no weights, so it has no logits; test code that needs logits "
            "with the tiny_vision_model fixture (a real model with random weights)"
        )

    def _begin(
        self,
        method: Method,
        prompt: PromptInput,
        images: Sequence[Any] | None,
        num_crops: int | None,
        options: GenerationOptions,
        batch_index: int | None = None,
    ) -> FakeCall:
        """Check one call's inputs and build its record (not yet stored)."""
        self._check_open()
        text, sources, loaded = self._prepare(prompt, images)
        crops = self.processor.num_crops if num_crops is None else check_num_crops(num_crops)
        counts = self.processor.image_token_counts(loaded, crops)
        ids = self.processor.tokenizer.encode(text, counts)
        prompt_tokens, image_tokens = len(ids), sum(1 for i in ids if i < 0)
        self.limits.check_tokens(prompt_tokens, image_tokens)
        needed = prompt_tokens + options.max_new_tokens
        if needed > self.context_length:
            raise ContextLengthError(
                f"the prompt takes {prompt_tokens} tokens ({image_tokens} for images) and "
                f"max_new_tokens is {options.max_new_tokens}: {needed} > the context of "
                f"{self.context_length}. "
                "Use fewer or smaller images, a lower num_crops, a shorter prompt or fewer new tokens."
            )
        task = _CURRENT_TASK.get()
        return FakeCall(
            method=method,
            task=task.name if task is not None else None,
            prompt=text,
            images=tuple(
                ImageRecord(
                    source=describe_source(source),
                    width=image.width,
                    height=image.height,
                    mode=image.mode,
                    fingerprint=image_fingerprint(image),
                    image_tokens=count,
                )
                for source, image, count in zip(sources, loaded, counts, strict=True)
            ),
            options=options,
            num_crops=crops,
            prompt_tokens=prompt_tokens,
            image_tokens=image_tokens,
            schema=task.schema if task is not None else None,
            batch_index=batch_index,
        )

    # -- answers --------------------------------------------------------------------------

    def _answer(self, call: FakeCall, started: float) -> Generation:
        """Record the call, take its scripted answer and turn it into a ``Generation``."""
        with self._lock:
            self._calls.append(call)
            response = self._script.answer(call)
        _check_constrained_answer(call, response)
        text, token_ids, finish = self._complete(response, call.options)
        preprocess_s = time.perf_counter() - started
        completion = len(token_ids)
        decode_s = (completion - 1) / self.tokens_per_second if completion > 1 else 0.0
        result = Generation(
            text=text,
            token_ids=token_ids,
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=call.prompt_tokens,
                image_tokens=call.image_tokens,
                completion_tokens=completion,
            ),
            timings=Timings(
                preprocess_s=preprocess_s,
                time_to_first_token_s=preprocess_s,
                decode_s=decode_s,
                total_s=preprocess_s + decode_s,
                tokens_per_second=self.tokens_per_second if completion > 1 else 0.0,
            ),
            model=self.model_ref,
        )
        call.response = response
        call.result = result
        return result

    def _complete(self, response: str, options: GenerationOptions) -> tuple[str, list[int], FinishReason]:
        """The scripted text as generation would end it: at a stop token or stop string
        ("stop"), or at ``max_new_tokens`` ("length"). With no end-of-turn token among the stop
        conditions (``stop=[]``, or only strings that never occur) a real model would run on to
        ``max_new_tokens``, so the reason is "length" then too."""
        tokenizer = self.processor.tokenizer
        stop = stop_conditions(options, tokenizer)
        stop_ids, stop_strings = stop.token_ids, stop.strings
        text = response
        content = _text_ids(tokenizer, text)  # the answer's tokens, without a stop token
        stop_token: int | None = None
        finish: FinishReason | None = None
        for position, token in enumerate(content):
            if token in stop_ids:  # e.g. "<|end|>" written into the scripted text
                content, stop_token, finish = content[:position], token, "stop"
                text = tokenizer.decode(content)
                break
        cuts = [text.find(stop) for stop in stop_strings if stop in text]
        if cuts:
            text = text[: min(cuts)]
            content, stop_token, finish = _text_ids(tokenizer, text), None, "stop"
        if finish is None:
            stop_token = next((t for t in DEFAULT_STOP_TOKEN_IDS if t in stop_ids), None)
            finish = "stop" if stop_token is not None else "length"
        limit = options.max_new_tokens
        if len(content) > limit:
            content, stop_token, finish = content[:limit], None, "length"
            text = tokenizer.decode(content)
        elif len(content) == limit and stop_token is not None:
            stop_token, finish = None, "length"  # the limit came before the stop token
        return text, content + ([stop_token] if stop_token is not None else []), finish

    def _failed(self, exc: Exception) -> Generation:
        return Generation.failed(exc, self.model_ref)

    # -- generation (as VisionModel) ------------------------------------------------------

    def generate(
        self,
        prompt: PromptInput,
        images: Sequence[Any] | None = None,
        *,
        num_crops: int | None = None,
        options: GenerationOptions | Mapping[str, Any] | None = None,
        **option_fields: Any,
    ) -> Generation:
        """Like ``VisionModel.generate``, answered from the script."""
        started = time.perf_counter()
        resolved = _resolve_options(options, option_fields)
        call = self._begin("generate", prompt, images, num_crops, resolved)
        return self._answer(call, started)

    def stream(
        self,
        prompt: PromptInput,
        images: Sequence[Any] | None = None,
        *,
        num_crops: int | None = None,
        options: GenerationOptions | Mapping[str, Any] | None = None,
        **option_fields: Any,
    ) -> FakeGenerationStream:
        """Like ``VisionModel.stream``: inputs are checked now, text comes word by word."""
        started = time.perf_counter()
        resolved = _resolve_options(options, option_fields)
        call = self._begin("stream", prompt, images, num_crops, resolved)
        return FakeGenerationStream(self._answer(call, started))

    def generate_batch(
        self,
        prompts: Sequence[PromptInput | tuple[str, Sequence[Any]]],
        *,
        batch_size: int = 4,
        num_crops: int | None = None,
        options: GenerationOptions | Mapping[str, Any] | None = None,
        **option_fields: Any,
    ) -> list[Generation]:
        """Like ``VisionModel.generate_batch``: an item that fails (bad input, or a scripted
        phi3vision error) gets ``finish_reason="error"`` and its ``error``; the rest complete."""
        self._check_open()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionsError(f"batch_size must be a positive int, got {batch_size!r}")
        resolved = _resolve_options(options, option_fields)
        results: list[Generation] = []
        for index, item in enumerate(prompts):
            started = time.perf_counter()
            try:
                prompt, images = batch_item(item)
                call = self._begin("generate_batch", prompt, images, num_crops, resolved, index)
                results.append(self._answer(call, started))
            except Phi3VisionError as exc:
                results.append(self._failed(exc))
        return results

    # -- task helpers: TaskMixin's own code, with the task's name recorded ----------------

    describe = _as_task("describe", TaskMixin.describe)
    extract_text = _as_task("extract_text", TaskMixin.extract_text)
    compare = _as_task("compare", TaskMixin.compare)
    ask = _as_task("ask", TaskMixin.ask)
    extract_result = _as_task("extract", TaskMixin.extract_result)
    extract = _as_task("extract", TaskMixin.extract)


class FakeGenerationStream:
    """Like ``GenerationStream``: iterate for text pieces (word by word here); ``result`` is the
    final ``Generation`` once iteration has ended."""

    def __init__(self, result: Generation) -> None:
        self._final = result
        self._result: Generation | None = None
        self._iterator: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def _run(self) -> Iterator[str]:
        for piece in re.split(r"(?<=\s)(?=\S)", self._final.text):
            if piece:
                yield piece
        self._result = self._final

    def close(self) -> None:
        """Stop early, like ``GenerationStream.close``; ``result`` then stays unavailable."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()

    @property
    def result(self) -> Generation:
        if self._result is None:
            raise RuntimeError("the stream has not finished: iterate over it to the end first")
        return self._result

    @property
    def text(self) -> str:
        return self.result.text


def _reasons(device: str, dtype: str, attn_implementation: str) -> dict[str, str]:
    """``info.reasons``: what was asked for, and that a fake honours none of it."""
    return {
        "device": f"fake model: {device!r} was asked for, nothing runs on a device",
        "dtype": f"fake model: {dtype!r} was asked for, there are no weights",
        "attn_implementation": f"fake model: {attn_implementation!r} was asked for, no attention runs",
    }


def _resolve_options(
    options: GenerationOptions | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> GenerationOptions:
    """``resolve_options``, and the real model's error for a constraint without the backend."""
    resolved = resolve_options(options, overrides)
    if constraint_of(resolved) is not None:
        require_backend("constrained decoding (json_schema, regex, choices)")
    return resolved


def _check_constrained_answer(call: FakeCall, response: str) -> None:
    """A constrained call's scripted answer must satisfy the constraint, as the real model's would."""
    constraint = constraint_of(call.options)
    if constraint is None:
        return
    problem = answer_problem(constraint, response)
    if problem is not None:
        raise ScriptedAnswerError(
            f"the scripted answer to this {call.name} call breaks its constraint ({constraint.describe()}), "
            f"so the real model could never give it: {problem}"
        )


def _text_ids(tokenizer: PromptTokenizer, text: str) -> list[int]:
    """Token ids of generated text: no start-of-sequence token, special tokens recognised."""
    return list(tokenizer.tokenizer.encode(text, add_special_tokens=False).ids)


__all__ = [
    "FakeGenerationStream",
    "FakeNotSupportedError",
    "FakeVisionModel",
    "ScriptedAnswerError",
    "packaged_tokenizer",
]
