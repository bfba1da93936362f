"""One generation call of the front end, from the engine's token chunks to results, and the
stream that shows its text. Nothing here knows which engine runs the call."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .engine import STREAM_CLOSED_MESSAGE, Engine, Request
from .errors import ModelClosedError, Phi3VisionError
from .results import Generation, ModelRef, Timings, Usage
from .stopping import RowTexts, stop_conditions

if TYPE_CHECKING:
    from .options import GenerationOptions
    from .processing.tokenization import PromptTokenizer


@dataclass(frozen=True)
class CallMarks:
    """What the front end knows of a call before the engine runs it: when it ``started``
    (engine clock), each request's preparation time, the model reference for its results,
    and how to tell that the model was closed meanwhile."""

    started: float
    prepare_s: list[float]
    model: ModelRef
    closed: Callable[[], bool]


class Call:
    """Starts the engine on ``requests`` at once (``engine.run``), then: ``deltas()`` reads its
    chunks (one list per chunk, one text delta per row; the last list holds the rest of each
    text) until every row has stopped, and ``results()`` makes the ``Generation`` of each row."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: PromptTokenizer,
        requests: Sequence[Request],
        options: GenerationOptions,
        chunk_size: int,
        marks: CallMarks,
    ) -> None:
        self.engine = engine
        self.requests = list(requests)
        self.marks = marks
        run_at = engine.clock()
        self._chunks = engine.run(requests, options, chunk_size=chunk_size)
        self._run_s = engine.clock() - run_at  # the engine's own preparation (pixels, on the real one)
        self._rows = RowTexts(len(requests), stop_conditions(options, tokenizer), tokenizer)
        self._first_token_at: float | None = None

    def deltas(self) -> Generator[list[str], None, None]:
        try:
            for chunk in self._chunks:
                if self._first_token_at is None:
                    self._first_token_at = self.engine.clock()
                yield self._rows.add(chunk)
                if self._rows.all_stopped:
                    break
                if self.marks.closed():
                    raise ModelClosedError(STREAM_CLOSED_MESSAGE)
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        yield self._rows.finish()

    def run_to_end(self) -> list[Generation]:
        for _ in self.deltas():
            pass
        return self.results()

    def results(self) -> list[Generation]:
        ended = self.engine.clock()
        first_token_at = ended if self._first_token_at is None else self._first_token_at
        results = []
        for row, request in enumerate(self.requests):
            result = self._result(row, request, first_token_at, ended)
            self.engine.finished(request, result)
            results.append(result)
        return results

    def _result(self, row: int, request: Request, first_token_at: float, ended: float) -> Generation:
        text, started = self._rows.texts[row], self.marks.started
        completion = len(text.token_ids)
        decode_s = max(0.0, ended - first_token_at)
        return Generation(
            text=text.text,
            token_ids=list(text.token_ids),
            finish_reason="stop" if self._rows.stopped[row] else "length",
            usage=Usage(
                prompt_tokens=request.prompt.num_tokens,
                image_tokens=request.prompt.num_image_tokens,
                completion_tokens=completion,
            ),
            timings=Timings(
                preprocess_s=self.marks.prepare_s[row] + self._run_s,
                time_to_first_token_s=first_token_at - started,
                decode_s=decode_s,
                total_s=ended - started,
                tokens_per_second=(completion - 1) / decode_s if completion > 1 and decode_s > 0 else 0.0,
            ),
            model=self.marks.model,
        )


def run_in_batches(
    count: int,
    batch_size: int,
    prepare: Callable[[int], Request],
    run: Callable[[list[Request], float, list[float]], list[Generation]],
    engine: Engine,
    max_new_tokens: int,
    model: ModelRef,
) -> list[Generation]:
    """``generate_batch``'s loop: items ``0..count-1`` are prepared ``batch_size`` at a time
    (an item that fails gets a failed result), then run in the groups the engine allows
    (``run(requests, started, prepare_s)``); a group that fails fails its items only."""
    results: list[Generation | None] = [None] * count
    for window in range(0, count, batch_size):
        ready: list[tuple[int, Request, float]] = []
        for index in range(window, min(window + batch_size, count)):
            started = engine.clock()
            try:
                ready.append((index, prepare(index), engine.clock() - started))
            except Phi3VisionError as exc:
                results[index] = Generation.failed(exc, model)
        for group in engine.batches([request for _, request, _ in ready], max_new_tokens):
            members = [ready[member] for member in group]
            try:
                generated = run([m[1] for m in members], engine.clock(), [m[2] for m in members])
            except Phi3VisionError as exc:  # out of memory, or a scripted error: this group only
                generated = [Generation.failed(exc, model) for _ in members]
            for (index, _, _), generation in zip(members, generated, strict=True):
                results[index] = generation
    finished = [result for result in results if result is not None]
    if len(finished) != count:  # every item either failed or was generated
        raise Phi3VisionError("internal error: a batch item has no result")
    return finished


_WORD_START = re.compile(r"(?<=\s)(?=\S)")
_MAX_HELD = 32
"""Characters a stream holds back at most while it waits for the end of a word."""


class GenerationStream:
    """Iterate for the text, whole words at a time (a word is shown once the text after it
    has begun; a run of more than 32 characters without a space is shown as it comes);
    ``result`` is the final ``Generation`` once iteration has ended."""

    def __init__(self, deltas: Generator[list[str], None, None], finish: Callable[[], Generation]) -> None:
        self._deltas = deltas
        self._finish = finish
        self._result: Generation | None = None
        self._iterator: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def _run(self) -> Iterator[str]:
        held = ""
        try:
            for deltas in self._deltas:
                held += deltas[0]
                starts = [match.start() for match in _WORD_START.finditer(held)]
                cut = starts[-1] if starts else (len(held) if len(held) > _MAX_HELD else 0)
                if cut:
                    piece, held = held[:cut], held[cut:]
                    yield piece
        finally:
            self._deltas.close()
        self._result = self._finish()
        if held:
            yield held

    def close(self) -> None:
        """Stop generating (if iteration was left unfinished) and free the KV cache."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        else:
            self._deltas.close()

    @property
    def result(self) -> Generation:
        if self._result is None:
            raise RuntimeError("the stream has not finished: iterate over it to the end first")
        return self._result

    @property
    def text(self) -> str:
        return self.result.text
