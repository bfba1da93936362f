"""The request collector on its own, over a recording stand-in for the model (no server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from phi3vision import GenerationOptions, Prompt
from phi3vision.server.batcher import Batcher


class RecordingModel:
    """Answers each batch at once with its prompts' texts and records the batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.started = threading.Event()

    def generate_batch(
        self, prompts: Sequence[Prompt], batch_size: int, options: GenerationOptions
    ) -> list[Any]:
        self.batches.append(len(prompts))
        self.started.set()
        return [f"answer {i}" for i in range(len(prompts))]


def _batcher(model: RecordingModel, max_wait_s: float) -> Batcher:
    return Batcher(model, max_batch_size=8, window_s=0.01, max_wait_s=max_wait_s, max_queue=8)  # type: ignore[arg-type]


def test_a_batch_waits_for_a_request_still_being_read() -> None:
    model = RecordingModel()
    batcher = _batcher(model, max_wait_s=60)
    options = GenerationOptions(max_new_tokens=4)
    try:
        with batcher.arrival():  # the second request: its body read, its images decoded
            first = batcher.submit(Prompt().user("first"), options)
            time.sleep(0.3)  # far beyond the 10 ms window
            assert not model.started.is_set(), "the batch started without the arriving request"
            second = batcher.submit(Prompt().user("second"), options)
        assert (first.result(timeout=30), second.result(timeout=30)) == ("answer 0", "answer 1")
    finally:
        batcher.close(timeout=30)
    assert model.batches == [2]


def test_without_arrivals_a_batch_starts_after_its_window() -> None:
    model = RecordingModel()
    batcher = _batcher(model, max_wait_s=60)
    options = GenerationOptions(max_new_tokens=4)
    try:
        first = batcher.submit(Prompt().user("first"), options)
        assert model.started.wait(timeout=30), "the batch did not start after its window"
        second = batcher.submit(Prompt().user("second"), options)
        assert (first.result(timeout=30), second.result(timeout=30)) == ("answer 0", "answer 0")
    finally:
        batcher.close(timeout=30)
    assert model.batches == [1, 1]


def test_an_arrival_that_ends_in_an_error_stops_the_wait() -> None:
    model = RecordingModel()
    batcher = _batcher(model, max_wait_s=60)
    options = GenerationOptions(max_new_tokens=4)
    try:
        first = batcher.submit(Prompt().user("first"), options)
        try:
            with batcher.arrival():
                raise ValueError("a bad request body")
        except ValueError:
            pass
        assert first.result(timeout=30) == "answer 0"
    finally:
        batcher.close(timeout=30)
    assert model.batches == [1]
