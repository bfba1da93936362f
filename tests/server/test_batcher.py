"""The request collector on its own, over a recording stand-in for the model (no server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

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


@pytest.fixture
def model() -> RecordingModel:
    return RecordingModel()


@pytest.fixture
def batcher(model: RecordingModel) -> Iterator[Batcher]:
    """A window of 10 ms, and a long wait for arriving requests (a busy CI machine is slow)."""
    collector = Batcher(model, max_batch_size=8, window_s=0.01, max_wait_s=60, max_queue=8)  # type: ignore[arg-type]
    yield collector
    collector.close(timeout=30)


OPTIONS = GenerationOptions(max_new_tokens=4)


def test_a_batch_waits_for_a_request_still_being_read(model: RecordingModel, batcher: Batcher) -> None:
    with batcher.arrival():  # the second request: its body read, its images decoded
        first = batcher.submit(Prompt().user("first"), OPTIONS)
        time.sleep(0.3)  # far beyond the 10 ms window
        assert not model.started.is_set(), "the batch started without the arriving request"
        second = batcher.submit(Prompt().user("second"), OPTIONS)
    assert (first.result(timeout=30), second.result(timeout=30)) == ("answer 0", "answer 1")
    assert model.batches == [2]


def test_without_arrivals_a_batch_starts_after_its_window(model: RecordingModel, batcher: Batcher) -> None:
    first = batcher.submit(Prompt().user("first"), OPTIONS)
    assert model.started.wait(timeout=30), "the batch did not start after its window"
    second = batcher.submit(Prompt().user("second"), OPTIONS)
    assert (first.result(timeout=30), second.result(timeout=30)) == ("answer 0", "answer 0")
    assert model.batches == [1, 1]


def test_an_arrival_that_ends_in_an_error_stops_the_wait(model: RecordingModel, batcher: Batcher) -> None:
    first = batcher.submit(Prompt().user("first"), OPTIONS)
    with pytest.raises(ValueError), batcher.arrival():
        raise ValueError("a bad request body")
    assert first.result(timeout=30) == "answer 0"  # not the 60 s of the long wait
    assert model.batches == [1]
