"""The job: run a task over items, one JSON line per item, resumable; and what it did.

``result_row`` is the one definition of an output line, so that every executor of a job (this
module's ``BatchJob``, or a distributed one) writes identical, resumable files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ..constraints import constraint_of
from ..constraints.spec import CONSTRAINT_FIELDS
from ..errors import OutputParseError, Phi3VisionError
from ..images.sources import is_remote
from ..prompt import Prompt
from ..results import Generation, ModelRef
from ..tasks import extract_instruction, get_task
from .config import BatchSettings, Task, batch_settings
from .items import BatchItem, check_unique_keys
from .results_file import ResultsFile

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..model import VisionModel
    from ..options import GenerationOptions
    from ..tasks import TaskPrompts
    from .config import BatchKeywords

__all__ = [
    "RESULT_FIELDS",
    "ROW_FIELDS",
    "BatchJob",
    "BatchSummary",
    "JobExecutor",
    "failed_result",
    "result_row",
    "run_batch",
]

_RECORD_VERSION = 1
"""Bumped when the fingerprint recipe changes, so that an old file is not resumed wrongly."""

RESULT_FIELDS = ("text", "finish_reason", "usage", "timings", "model", "error")
"""The fields of a ``Generation`` that an output row carries."""

ROW_FIELDS = ("key", "input", "task", "status", *RESULT_FIELDS)
"""The fields of every output row, in order, before its ``fingerprint`` (and an extract's ``value``)."""


def failed_result(exc: BaseException, model: ModelRef | None = None) -> Generation:
    """A ``Generation`` standing for a failure, shaped like the ones ``generate_batch`` returns
    for a failed item, so that consumers of results see one type whatever happened."""
    return Generation.failed(exc, model)


class BatchSummary(BaseModel):
    """What a job did. ``done`` and ``failed`` count this run; ``skipped`` counts items that
    were already in the output (resume), ``skipped_failed`` those of them recorded as failed
    (not retried without ``retry_failed``); ``repaired_bytes`` is the size of a partial last line
    that an earlier, interrupted run had left and that was removed."""

    model_config = ConfigDict(frozen=True)

    output: str
    task: str
    total: int
    done: int
    failed: int
    skipped: int
    skipped_failed: int = 0
    elapsed_s: float
    interrupted: bool = False
    repaired_bytes: int = 0

    @property
    def remaining(self) -> int:
        """Items neither finished nor skipped: non-zero only after an interruption."""
        return self.total - self.done - self.failed - self.skipped

    @property
    def items_per_second(self) -> float:
        processed = self.done + self.failed
        return processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True when the job ran to the end and no item of the output is a failure, whether it
        failed in this run or in an earlier one that this run resumed."""
        return self.failed == 0 and self.skipped_failed == 0 and not self.interrupted

    def describe(self) -> str:
        """One line for a person: counts, time and throughput."""
        state = "interrupted" if self.interrupted else "finished"
        text = (
            f"{state}: {self.total} items, {self.done} done, {self.failed} failed, {self.skipped} skipped"
            + (
                f" ({self.skipped_failed} of them failed before; --retry-failed runs them again)"
                if self.skipped_failed
                else ""
            )
            + (f", {self.remaining} not run" if self.remaining else "")
            + f" in {self.elapsed_s:.1f} s ({self.items_per_second:.2f} items/s) -> {self.output}"
        )
        if self.repaired_bytes:
            text += f" (removed a partial last line of {self.repaired_bytes} bytes left by an earlier run)"
        return text


def result_row(
    settings: BatchSettings, item: BatchItem, fingerprint: str, result: Generation
) -> dict[str, Any]:
    """The output line for ``item``'s ``result`` (see ``BatchJob`` for its fields)."""
    row = {
        "key": item.key,
        "input": {"image": item.image, "question": settings.question_for(item)},
        "task": settings.task,
        "status": "failed" if result.finish_reason == "error" else "done",
        **result.model_dump(mode="json", include=set(RESULT_FIELDS)),
        "fingerprint": fingerprint,
    }
    if settings.task == "extract":  # the validated object (the schema-constrained answer)
        row["value"] = json.loads(result.text) if result.finish_reason == "stop" else None
    return row


def content_digest(source: str) -> str:
    """What identifies an image's content for resuming: the sha256 of a local file's bytes
    (so an edited image is run again), or of the URL itself (a URL is not downloaded twice
    just to compute a key). An unreadable file is keyed by its path; it will fail when run."""
    if is_remote(source):
        return "url:" + hashlib.sha256(source.encode("utf-8")).hexdigest()
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return "unreadable:" + hashlib.sha256(source.encode("utf-8")).hexdigest()
    return "sha256:" + digest.hexdigest()


_FINGERPRINT_TASK_NAMES = {"extract_text": "ocr"}


class JobExecutor(ABC):
    """Runs a job's generation outside this process (``phi3vision.ray.RayExecutor``), in the
    model's place: ``BatchJob(executor, ...)`` plans, fingerprints and writes the output here as
    with a loaded model, taking ``task_prompts`` for its prompts and ``model_id``, ``revision``
    and ``num_crops`` for its fingerprints, so that the file is the same either way."""

    task_prompts: TaskPrompts
    model_id: str
    revision: str | None
    num_crops: int

    @abstractmethod
    def stream(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int, options: GenerationOptions
    ) -> Iterator[Generation]:
        """One result per ``(instruction, image source)`` request, in order, as they finish."""


class BatchJob:
    """Run ``task`` over ``items`` with ``model``, appending one JSON line per item to ``output``.

    Each line holds the item's ``key``, its ``input`` (image as given, question), the ``task``,
    ``status`` ("done" or "failed"), the result fields ``text``, ``finish_reason``, ``usage``,
    ``timings``, ``model`` and ``error``, and a ``fingerprint`` (see ``result_row``). A run
    writes its lines in input order; a resumed run appends the items it had left (the last
    line for a key is current). An item that fails (a broken image, a prompt too long) is
    recorded with its error and the job goes on.

    The fingerprint hashes the key, the image content (see ``content_digest``) and every
    setting that changes the result: task, instruction or question, model id and revision,
    num_crops and the generation options. With ``resume=True`` an item whose fingerprint is
    already in the output is skipped, so an interrupted job continues where it stopped, and an
    item whose image or settings changed runs again, its new line appended after the old one
    (the last line of a key is the current one). Device, dtype and attention choices are not
    part of it: they change how a result is computed, not what was asked. Items recorded as
    failed are skipped too, unless ``retry_failed=True``, which removes the failed lines of
    this job's items and runs those items again.

    The keyword arguments are ``BatchSettings``' fields (``question``, ``batch_size=4``,
    ``options``, ``resume``, ``overwrite``, ``retry_failed``, ``progress``); bad values are an
    ``OptionsError``. An existing, non-empty output is only touched with ``resume`` or
    ``overwrite`` (``retry_failed`` implies ``resume``).
    ``KeyboardInterrupt`` stops the job between two lines and propagates; ``summary`` then
    says what was done.
    """

    def __init__(
        self,
        model: VisionModel | JobExecutor,
        task: Task,
        items: Sequence[BatchItem],
        output: str | os.PathLike[str],
        **settings: Unpack[BatchKeywords],
    ) -> None:
        self.settings = batch_settings(task, **settings)
        self.items = list(items)
        self.settings.check_items(self.items)
        check_unique_keys(self.items)
        self.model = model
        self.output = Path(output)
        self._done = 0
        self._failed = 0
        self._skipped = 0
        self._skipped_failed = 0
        self._elapsed = 0.0
        self._interrupted = False
        self._repaired = 0
        self.failures: list[tuple[str, str]] = []
        """(key, error message) of each item that failed in the last run, in order."""

    @classmethod
    def from_settings(
        cls,
        model: VisionModel | JobExecutor,
        settings: BatchSettings,
        items: Sequence[BatchItem],
        output: str | os.PathLike[str],
    ) -> BatchJob:
        """The job for settings built beforehand (by ``batch_settings``)."""
        return cls(model, settings.task, items, output, **settings.keywords())

    # The settings under the attribute names a job has always had.
    @property
    def task(self) -> Task:
        return self.settings.task

    @property
    def question(self) -> str | None:
        return self.settings.question

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def options(self) -> GenerationOptions:
        return self.settings.options

    @property
    def resume(self) -> bool:
        return self.settings.resume

    @property
    def overwrite(self) -> bool:
        return self.settings.overwrite

    @property
    def retry_failed(self) -> bool:
        return self.settings.retry_failed

    @property
    def progress(self) -> bool | None:
        return self.settings.progress

    @property
    def summary(self) -> BatchSummary:
        return BatchSummary(
            output=str(self.output),
            task=self.settings.task,
            total=len(self.items),
            done=self._done,
            failed=self._failed,
            skipped=self._skipped,
            skipped_failed=self._skipped_failed,
            elapsed_s=self._elapsed,
            interrupted=self._interrupted,
            repaired_bytes=self._repaired,
        )

    def instruction(self, item: BatchItem) -> str:
        """The user turn's text for ``item``: its own question, the job's, or the task prompt."""
        question = self.settings.question_for(item)
        if question is not None:
            return question
        prompts = self.model.task_prompts
        if self.settings.task == "extract":
            return extract_instruction(prompts.extract, self.settings.options.json_schema)
        return str(get_task(self.settings.task).instruction(prompts))

    def _settings_key(self) -> str:
        if isinstance(self.model, JobExecutor):
            model_id, revision, num_crops = self.model.model_id, self.model.revision, self.model.num_crops
        else:
            ref = self.model.model_ref
            model_id, revision, num_crops = ref.model_id, ref.revision, self.model.processor.num_crops
        return json.dumps(
            {
                "v": _RECORD_VERSION,
                # Fingerprints keep the name extract_text had before the task registry ("ocr"),
                # so that files written then still resume.
                "task": _FINGERPRINT_TASK_NAMES.get(self.settings.task, self.settings.task),
                "model": model_id,
                "revision": revision,
                "num_crops": num_crops,
                **_options_key(self.settings.options),
            },
            sort_keys=True,
        )

    def fingerprint(self, item: BatchItem, settings: str | None = None) -> str:
        """The resume key of ``item`` under this job's settings (see the class docstring)."""
        key = settings or self._settings_key()
        parts = [item.key, content_digest(item.source), self.instruction(item), key]
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()

    def run(self) -> BatchSummary:
        """Process every item not yet in the output; return the summary."""
        self._done = self._failed = self._skipped = self._skipped_failed = 0
        self._interrupted = False
        self.failures = []
        started = time.perf_counter()
        out = ResultsFile(self.output, resume=self.settings.resume, overwrite=self.settings.overwrite)
        try:
            self._repaired = out.repaired_bytes
            todo = self._plan(out)
            self._run_items(todo, out, started)
        except KeyboardInterrupt:
            self._interrupted = True
            raise
        finally:
            try:
                self._count(out)
            finally:
                out.close()
                self._elapsed = time.perf_counter() - started
        return self.summary

    def _plan(self, out: ResultsFile) -> list[tuple[BatchItem, str]]:
        """The items to run with their fingerprints; counts the ones skipped. With
        ``retry_failed``, the failed lines of this job's items are removed first."""
        status = {record["fingerprint"]: record.get("status") for record in out.records}
        retry: set[str] = set()
        if self.settings.retry_failed:
            keys = {item.key for item in self.items}
            retry = {
                record["fingerprint"]
                for record in out.records
                if record.get("status") == "failed" and record.get("key") in keys
            }
        settings = self._settings_key()
        todo: list[tuple[BatchItem, str]] = []
        for item in self.items:
            fingerprint = self.fingerprint(item, settings)
            previous = None if fingerprint in retry else status.get(fingerprint)
            if previous is None:
                todo.append((item, fingerprint))
            else:
                self._skipped += 1
                if previous == "failed":
                    self._skipped_failed += 1
        if retry:
            out.drop(retry)
        return todo

    def _count(self, out: ResultsFile) -> None:
        """Done and failed counts, and the failures, from the lines this run wrote."""
        written = out.written_since_mark()
        failed = [record for record in written if record.get("status") == "failed"]
        self._done = len(written) - len(failed)
        self._failed = len(failed)
        self.failures = [
            (str(r.get("key")), str((r.get("error") or {}).get("message", "failed"))) for r in failed
        ]

    def _run_items(self, todo: Sequence[tuple[BatchItem, str]], out: ResultsFile, started: float) -> None:
        from tqdm import tqdm

        out.mark()
        disable = None if self.settings.progress is None else not self.settings.progress
        with tqdm(
            total=len(todo), desc=self.settings.task, unit="img", file=sys.stderr, disable=disable
        ) as bar:
            for (item, fingerprint), result in self._results(todo):
                out.append(result_row(self.settings, item, fingerprint, result))
                if result.finish_reason == "error":
                    self._failed += 1  # for the progress bar; the summary recounts from the file
                else:
                    self._done += 1
                self._elapsed = time.perf_counter() - started
                bar.update(1)
                if self._failed:
                    bar.set_postfix(failed=self._failed, refresh=False)

    def _results(
        self, todo: Sequence[tuple[BatchItem, str]]
    ) -> Iterator[tuple[tuple[BatchItem, str], Generation]]:
        """Each item with its result, in input order: from the executor as they finish, or
        from the model ``batch_size`` items at a time."""
        size = self.settings.batch_size
        if isinstance(self.model, JobExecutor):
            requests = [(self.instruction(item), item.source) for item, _ in todo]
            results = self.model.stream(requests, batch_size=size, options=self.settings.options)
            for entry, result in zip(todo, results, strict=True):
                yield entry, self._checked(result)
            return
        model = self.model
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            yield from zip(chunk, self._generate(model, chunk), strict=True)

    def _generate(self, model: VisionModel, chunk: Sequence[tuple[BatchItem, str]]) -> list[Generation]:
        """Results for one chunk, in order. A prompt that cannot be built (a question holding
        chat markers) fails its own item here; ``generate_batch`` fails bad images itself."""
        results: list[Generation | None] = [None] * len(chunk)
        prompts: list[Prompt] = []
        positions: list[int] = []
        for position, (item, _) in enumerate(chunk):
            try:
                prompts.append(Prompt().user(self.instruction(item), images=[item.source]))
                positions.append(position)
            except Phi3VisionError as exc:
                results[position] = failed_result(exc, model.model_ref)
        if prompts:
            generated = model.generate_batch(
                prompts, batch_size=self.settings.batch_size, options=self.settings.options
            )
            for position, result in zip(positions, generated, strict=True):
                results[position] = self._checked(result)
        return [r if r is not None else failed_result(RuntimeError("not run"), None) for r in results]

    def _checked(self, result: Generation) -> Generation:
        """An extract answer that ran out of tokens is a failed item (``--retry-failed`` can run
        it again with a larger budget); the others are the answers themselves."""
        if self.settings.task != "extract" or result.finish_reason != "length":
            return result
        return failed_result(
            OutputParseError(
                f"the answer ran out of tokens after {result.usage.completion_tokens} before the object "
                "was complete: raise max_new_tokens, or bound the schema (see docs/structured.md)"
            ),
            result.model,
        )


def _options_key(options: GenerationOptions) -> dict[str, Any]:
    """The options as they enter the fingerprint. The constraint fields are left out when unset,
    so that files written before they existed still resume."""
    constraint = constraint_of(options)
    key: dict[str, Any] = {"options": options.model_dump(mode="json", exclude=set[str](CONSTRAINT_FIELDS))}
    if constraint is not None:
        key["constraint"] = [constraint.kind, constraint.text]
    return key


def run_batch(
    model: VisionModel | JobExecutor,
    task: Task,
    items: Sequence[BatchItem],
    output: str | os.PathLike[str],
    **settings: Unpack[BatchKeywords],
) -> BatchSummary:
    """``BatchJob(...).run()`` in one call; see ``BatchJob`` and ``BatchSettings`` for the arguments."""
    return BatchJob(model, task, items, output, **settings).run()
