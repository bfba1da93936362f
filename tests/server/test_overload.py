"""A full queue, private image URLs when allowed, and a SIGTERM that drains the requests in flight."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from .conftest import MODEL, ImageHost, Server, data_uri, needs_server_extra

needs_server_extra()

LONG = 600  # tokens: long enough that the other requests of a test arrive while it runs


def user(text: str, image: str | None = None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": image}})
    return {"role": "user", "content": parts}


class Background:
    """Run ``work`` in a thread; ``value`` holds its result (or the exception it raised)."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.value: Any = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.value = work()
        except Exception as exc:
            self.value = exc

    def result(self) -> Any:
        self._thread.join(600)
        assert not self._thread.is_alive()
        return self.value


def start_long_stream(server: Server) -> tuple[Background, threading.Event]:
    """A streamed request that keeps the model busy; the event is set once it is generating."""
    generating = threading.Event()

    def read() -> list[Any]:
        stream = server.client().chat.completions.create(
            model=MODEL, messages=[user("Describe the image.", data_uri())], max_tokens=LONG, stream=True
        )
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            generating.set()
        return chunks

    reader = Background(read)
    assert generating.wait(300), "the long request never started"
    return reader, generating


def queue_one(server: Server) -> Background:
    """A small request, returned once the server reports it waiting in the queue."""
    waiting = Background(lambda: server.post({"model": MODEL, "messages": [user("Hi")], "max_tokens": 2}))
    deadline = time.monotonic() + 60
    while server.health()["queued"] < 1:
        assert time.monotonic() < deadline, "the second request never reached the queue"
        time.sleep(0.02)
    return waiting


def finished_normally(chunks: Any) -> bool:
    return (
        isinstance(chunks, list)
        and chunks[-1].choices[0].finish_reason in ("stop", "length")
        and chunks[-1].usage
    )


@pytest.fixture
def small_queue(make_server: Callable[..., Server]) -> Iterator[Server]:
    yield make_server("--max-queue", "1", "--max-batch-size", "1", "--batch-window-ms", "0",
                      "--max-tokens", str(LONG), "--allow-private-urls")  # fmt: skip


def test_a_full_queue_answers_503_and_the_others_complete(small_queue: Server):
    running, _ = start_long_stream(small_queue)
    waiting = queue_one(small_queue)
    refused = small_queue.post({"model": MODEL, "messages": [user("Me too")], "max_tokens": 2})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.headers["Retry-After"] == "1"
    assert finished_normally(running.result())
    assert waiting.result().status_code == 200
    assert small_queue.post({"model": MODEL, "messages": [user("Again")], "max_tokens": 2}).status_code == 200


def test_private_image_urls_are_fetched_when_allowed(small_queue: Server, image_host: ImageHost):
    answer = small_queue.post(
        {"model": MODEL, "messages": [user("What is it?", image_host.url)], "max_tokens": 2}
    )
    assert answer.status_code == 200, answer.text
    assert image_host.hits == ["/image.png"]


def test_sigterm_drains_the_requests_in_flight(make_server: Callable[..., Server]):
    server = make_server("--max-tokens", str(LONG), "--max-batch-size", "1", "--batch-window-ms", "0")
    running, _ = start_long_stream(server)
    waiting = queue_one(server)
    server.process.send_signal(signal.SIGTERM)
    chunks = running.result()
    assert finished_normally(chunks), chunks
    assert chunks[-1].usage.completion_tokens > 1
    answer = waiting.result()
    assert isinstance(answer, requests.Response) and answer.status_code == 200, answer
    # uvicorn re-raises the signal once it has shut down, so the exit status says "terminated".
    assert server.process.wait(120) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log()
