"""The request collector: one worker thread owns the model; requests wait in a bounded queue.

Requests that arrive within a short window of each other and ask for identical options are
generated together through ``VisionModel.generate_batch`` (which takes one options object and
keeps a failing item from failing the others). A batch about to start also waits, up to
``max_wait_s``, for the requests the server is still reading (their bodies received, their
images decoded: an ``Arrival`` each): without that, clients that send their next request when
an answer comes split into groups whose requests never meet, each group's arriving while the
other's batch runs. A streamed request, or one with a seed (whose
sampled answer must not depend on its batch-mates), runs on its own. The event loop never
waits on the model: it gets a ``concurrent.futures.Future`` (or stream events) back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import Phi3VisionError
from ..options import GenerationOptions
from ..prompt import Prompt
from ..results import Generation

if TYPE_CHECKING:
    from ..model import VisionModel

log = logging.getLogger("phi3vision.server")

StreamEvent = (
    tuple[Literal["started"], None]
    | tuple[Literal["delta"], str]
    | tuple[Literal["done"], Generation]
    | tuple[Literal["error"], BaseException]
)


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests already (or the server is shutting down)."""


@dataclass
class _Job:
    prompt: Prompt
    options: GenerationOptions
    batch_key: str | None
    """Jobs with equal keys may share a batch; None runs alone."""
    result: Future[Generation] = field(default_factory=Future)
    emit: Callable[[StreamEvent], None] | None = None
    """Set for streamed jobs: receives the events, called from the worker thread."""
    cancelled: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """Collects requests and runs them on ``model`` in one worker thread."""

    def __init__(
        self,
        model: VisionModel,
        *,
        max_batch_size: int,
        window_s: float,
        max_queue: int,
        max_wait_s: float | None = None,
    ) -> None:
        self._model = model
        self._max_batch_size = max_batch_size
        self._window_s = window_s
        self._max_wait_s = window_s if max_wait_s is None else max(window_s, max_wait_s)
        self._max_queue = max_queue
        self._pending: deque[_Job] = deque()
        self._arriving = 0
        """Requests being read that have not reached the queue yet (see ``arrival``)."""
        self._changed = threading.Condition()
        self._closing = False
        self.batches_run = 0
        """Model calls made so far (a batch of several requests counts once)."""
        self.requests_run = 0
        self._worker = threading.Thread(target=self._work, name="phi3vision-model", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def closing(self) -> bool:
        return self._closing

    @contextmanager
    def arrival(self) -> Iterator[None]:
        """Around the reading of one request, up to and including its ``submit``: while it
        lasts, a batch about to start may wait for it (up to ``max_wait_s``)."""
        with self._changed:
            self._arriving += 1
        try:
            yield
        finally:
            with self._changed:
                self._arriving -= 1
                self._changed.notify_all()

    def submit(self, prompt: Prompt, options: GenerationOptions) -> Future[Generation]:
        """Queue a request for a whole answer."""
        key = None if options.seed is not None else options.model_dump_json()
        return self._put(_Job(prompt, options, key)).result

    def submit_stream(
        self, prompt: Prompt, options: GenerationOptions, emit: Callable[[StreamEvent], None]
    ) -> threading.Event:
        """Queue a streamed request; ``emit`` gets "started" (or "error") first, then the text
        deltas and "done" with the result. Set the returned event to stop it early."""
        return self._put(_Job(prompt, options, None, emit=emit)).cancelled

    def _put(self, job: _Job) -> _Job:
        with self._changed:
            if self._closing:
                raise QueueFullError("the server is shutting down")
            if len(self._pending) >= self._max_queue:
                raise QueueFullError(f"the queue is full ({self._max_queue} requests waiting)")
            self._pending.append(job)
            self._changed.notify_all()
        return job

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._worker.join(timeout)

    # -- the worker thread ----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            jobs = self._next_jobs()
            if not jobs:
                return
            self.batches_run += 1
            self.requests_run += len(jobs)
            started = time.perf_counter()
            try:
                if jobs[0].emit is not None:
                    self._run_stream(jobs[0])
                else:
                    self._run_batch(jobs)
            except BaseException as exc:  # keep serving: the error belongs to these requests
                log.exception("unexpected error while generating")
                for job in jobs:
                    self._fail(job, exc)
            log.debug(
                "%s of %d in %.3f s; %d waiting",
                "stream" if jobs[0].emit else "batch",
                len(jobs),
                time.perf_counter() - started,
                len(self._pending),
            )

    def _next_jobs(self) -> list[_Job]:
        """The next batch: the oldest job and, after the collection window (longer while
        requests are still arriving, up to ``max_wait_s``), the queued jobs with the same
        options. Empty when closing and nothing is left."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending or self._closing)
            if not self._pending:
                return []
            first = self._pending[0]
            if first.batch_key is not None and self._max_batch_size > 1 and not self._closing:
                start = time.monotonic()
                while self._batchable(first) < self._max_batch_size and not self._closing:
                    limit = self._max_wait_s if self._arriving else self._window_s
                    left = start + limit - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
            chosen = [first]
            if first.batch_key is not None:
                for job in list(self._pending)[1:]:
                    if len(chosen) == self._max_batch_size:
                        break
                    if job.batch_key == first.batch_key:
                        chosen.append(job)
            for job in chosen:
                self._pending.remove(job)
            return chosen

    def _batchable(self, first: _Job) -> int:
        return sum(1 for job in self._pending if job.batch_key == first.batch_key)

    def _run_batch(self, jobs: list[_Job]) -> None:
        results = self._model.generate_batch(
            [job.prompt for job in jobs], batch_size=len(jobs), options=jobs[0].options
        )
        for job, result in zip(jobs, results, strict=True):
            job.result.set_result(result)

    def _run_stream(self, job: _Job) -> None:
        assert job.emit is not None
        if job.cancelled.is_set():
            return
        try:
            stream = self._model.stream(job.prompt, options=job.options)
        except Phi3VisionError as exc:
            job.emit(("error", exc))
            return
        job.emit(("started", None))
        try:
            for delta in stream:
                if job.cancelled.is_set():  # the client went away: free the model for others
                    break
                job.emit(("delta", delta))
            else:
                job.emit(("done", stream.result))
        finally:
            stream.close()

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        if job.emit is not None:
            job.emit(("error", exc))
        elif not job.result.done():
            job.result.set_exception(exc)


def error_of(result: Generation) -> Phi3VisionError | None:
    """The library error a failed batch item stands for (its class by name), else None."""
    if result.error is None:
        return None
    from .. import errors

    cls: Any = getattr(errors, result.error.type, None)
    if not (isinstance(cls, type) and issubclass(cls, Phi3VisionError)):
        cls = Phi3VisionError
    return cls(result.error.message)
