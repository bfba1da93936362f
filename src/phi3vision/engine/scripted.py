"""``ScriptedEngine``: scripted answers instead of weights, for ``FakeVisionModel``.

It records each request as a ``FakeCall``, asks the script for the answer
(phi3vision.testing.script) and yields the answer's tokens, followed by the end-of-turn token a
chat model ends with. The front end then stops, truncates and counts exactly as it does for
the real model. Its clock is simulated: preparing takes no time, and each token after the
first takes ``1 / tokens_per_second``. No torch is imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ..constraints import answer_problem, constraint_of, require_backend
from ..errors import ModelClosedError, Phi3VisionError
from ..processing.tokenization import DEFAULT_STOP_TOKEN_IDS, PromptTokenizer
from ..stopping import stop_conditions
from ..testing.script import FakeCall, ImageRecord, ResponseScript
from . import CLOSED_MESSAGE, STREAM_CLOSED_MESSAGE, EngineInfo, Request

if TYPE_CHECKING:
    from ..options import GenerationOptions
    from ..results import Generation


class FakeNotSupportedError(Phi3VisionError, NotImplementedError):
    """The fake model cannot do this (it has no weights); use the ``tiny_vision_model`` fixture."""


class ScriptedAnswerError(AssertionError):
    """A scripted answer breaks the call's constraint (``json_schema``, ``regex``, ``choices``):
    the real model could not have produced it, so the test is wrong. Not a ``Phi3VisionError``,
    so that no code under test handles it as a model error."""


class ScriptedEngine:
    """See the module docstring. ``calls`` and ``script`` are the testing kit's handles."""

    def __init__(
        self,
        tokenizer: PromptTokenizer,
        *,
        model_id: str,
        revision: str | None,
        context_length: int,
        tokens_per_second: Callable[[], float],
        reasons: dict[str, str],
    ) -> None:
        self.tokenizer = tokenizer
        self.tokens_per_second = tokens_per_second
        """The simulated decoding speed, read at each chunk (the fake's attribute of that name)."""
        self.info = EngineInfo(
            model_id=model_id,
            revision=revision,
            directory="",
            device="cpu",
            dtype="float32",
            attn_implementation="fake",
            reasons=dict(reasons),
            num_parameters=0,
            context_length=context_length,
        )
        self.reuse_prefix = True
        self.script = ResponseScript()
        self.calls: list[FakeCall] = []
        self.lock = threading.RLock()
        self._open: list[tuple[Request, FakeCall]] = []  # answered, result not made yet
        self._now = 0.0
        self._closed = False

    @property
    def module(self) -> NoReturn:
        self._check_open()
        raise FakeNotSupportedError("FakeVisionModel has no weights, so it has no torch module")

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dtype(self) -> str:
        return "float32"

    @property
    def prefix_reused_tokens(self) -> int:
        """Always 0: a fake has no KV cache to reuse."""
        return 0

    def clock(self) -> float:
        with self.lock:
            return self._now

    def batches(self, requests: Sequence[Request], max_new_tokens: int) -> list[list[int]]:
        """One request at a time, as the script answers them: a scripted error fails its item only."""
        return [[index] for index in range(len(requests))]

    def logits(self, encoding: Any) -> NoReturn:
        raise FakeNotSupportedError(
            "FakeVisionModel has no weights, so it has no logits; test code that needs logits "
            "with the tiny_vision_model fixture (a real model with random weights)"
        )

    def clear_caches(self) -> None:
        """Nothing to forget: a fake keeps no image features or KV cache."""

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self._open.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError(CLOSED_MESSAGE)

    def run(
        self, requests: Sequence[Request], options: GenerationOptions, *, chunk_size: int = 8
    ) -> Iterator[list[list[int]]]:
        self._check_open()
        if constraint_of(options) is not None:  # the real engine's error without the backend
            require_backend("constrained decoding (json_schema, regex, choices)")
        rows = [self._answer(request, options) for request in requests]
        return self._chunks(rows, max(1, chunk_size))

    def finished(self, request: Request, result: Generation) -> None:
        with self.lock:
            for position, (waiting, call) in enumerate(self._open):
                if waiting is request:
                    call.result = result
                    del self._open[position]
                    return

    def _answer(self, request: Request, options: GenerationOptions) -> list[int]:
        """Record the call, take its scripted answer (a scripted exception is raised here)
        and return its tokens, ended as a chat model ends its turn."""
        prompt = request.prompt
        from ..images import image_fingerprint

        call = FakeCall(
            method=request.method,
            task=request.task,
            prompt=prompt.text,
            images=tuple(
                ImageRecord(
                    source=source,
                    width=image.width,
                    height=image.height,
                    mode=image.mode,
                    fingerprint=image_fingerprint(image),
                    image_tokens=count,
                )
                for source, image, count in zip(
                    prompt.sources, prompt.images, prompt.image_token_counts, strict=True
                )
            ),
            options=options,
            num_crops=prompt.num_crops,
            prompt_tokens=prompt.num_tokens,
            image_tokens=prompt.num_image_tokens,
            schema=request.schema,
            batch_index=request.batch_index,
        )
        with self.lock:
            self.calls.append(call)
            call.response = self.script.answer(call)
            self._open.append((request, call))
        _check_constrained_answer(call)
        tokens = list(self.tokenizer.tokenizer.encode(call.response, add_special_tokens=False).ids)
        stop_ids = stop_conditions(options, self.tokenizer).token_ids
        end = next((token for token in DEFAULT_STOP_TOKEN_IDS if token in stop_ids), None)
        if end is not None:
            tokens.append(end)  # a real model would run on to max_new_tokens without one
        return tokens[: options.max_new_tokens]

    def _chunks(self, rows: list[list[int]], chunk_size: int) -> Iterator[list[list[int]]]:
        """The rows' tokens, one for the first chunk, then ``chunk_size`` at a time; the
        simulated clock advances by the time the tokens after the first would take."""
        position, size = 0, 1
        while any(position < len(row) for row in rows):
            if self._closed:
                raise ModelClosedError(STREAM_CLOSED_MESSAGE)
            chunk = [row[position : position + size] for row in rows]
            if position > 0:
                with self.lock:
                    self._now += max(len(tokens) for tokens in chunk) / self.tokens_per_second()
            yield chunk
            position += size
            size = chunk_size


def _check_constrained_answer(call: FakeCall) -> None:
    """A constrained call's scripted answer must satisfy the constraint, as the real model's would."""
    constraint = constraint_of(call.options)
    if constraint is None or call.response is None:
        return
    problem = answer_problem(constraint, call.response)
    if problem is not None:
        raise ScriptedAnswerError(
            f"the scripted answer to this {call.name} call breaks its constraint ({constraint.describe()}), "
            f"so the real model could never give it: {problem}"
        )
