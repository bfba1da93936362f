"""Batch jobs: one task (describe, ocr or ask) over many images, results to a JSON Lines file.

A job over thousands of images runs for hours, so it must survive being stopped. That is why
results go to a file rather than a list: every finished item is written as one whole line and
forced to disk at once, so an interrupted job (Ctrl-C, a crash, even SIGKILL) leaves a valid
file, at worst with a partial last line, and ``resume=True`` repairs it and carries on without
redoing or losing any finished item.

    >>> from phi3vision import VisionModel
    >>> from phi3vision.jobs import collect_items, run_batch
    >>> vm = VisionModel.from_pretrained()                               # doctest: +SKIP
    >>> items = collect_items("photos/")                                 # doctest: +SKIP
    >>> run_batch(vm, "describe", items, "results.jsonl", resume=True)   # doctest: +SKIP

``phi3vision batch`` on the command line is a thin layer over this module.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from .errors import OptionsError, Phi3VisionError
from .options import GenerationOptions, resolve_options
from .prompt import Prompt
from .results import Generation, ModelRef

if TYPE_CHECKING:
    from .model import VisionModel

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_SUFFIXES",
    "TASKS",
    "BatchItem",
    "BatchJob",
    "BatchSummary",
    "Task",
    "check_output",
    "collect_items",
    "failed_result",
    "find_images",
    "read_manifest",
    "run_batch",
]

Task = Literal["describe", "ocr", "ask"]
TASKS: tuple[Task, ...] = ("describe", "ocr", "ask")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
)
"""File name endings picked up when a folder is given (compared case-insensitively)."""

MANIFEST_SUFFIXES: frozenset[str] = frozenset({".jsonl", ".csv"})
"""An input file ending in one of these is read as a manifest, not as an image."""

_MANIFEST_FIELDS = ("image", "question", "key")
_REMOTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|data:)", re.IGNORECASE)
_GLOB_CHARACTERS = frozenset("*?[")
_RECORD_VERSION = 1
"""Bumped when the fingerprint recipe changes, so that an old file is not resumed wrongly."""


# --------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class BatchItem:
    """One image to process.

    ``key`` names the item in the output and must be unique within a job; it defaults to the
    image as given. ``image`` is the image as given (written back in the output), ``source`` is
    what is loaded (a manifest-relative path resolved, or a URL unchanged), ``question`` the
    item's own question for the ask task, and ``origin`` says where the item came from
    ("list.csv line 4"), for messages.
    """

    key: str
    image: str
    source: str
    question: str | None = None
    origin: str = ""


def _is_remote(image: str) -> bool:
    """URLs and data URIs are passed to the image loader as they are, never joined to a folder."""
    return _REMOTE.match(image) is not None


def find_images(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (by extension, see ``IMAGE_EXTENSIONS``), sorted by their
    path inside the folder so that the order, and so the output, is the same on every run.

    Hidden files and folders (names starting with ".") are skipped: they are editor and OS
    leftovers such as macOS's ``._photo.jpg``, which look like images but are not.
    """
    root = Path(folder)
    candidates = root.rglob("*") if recursive else root.iterdir()
    found: list[tuple[str, Path]] = []
    for path in candidates:
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append((relative.as_posix(), path))
    return [path for _, path in sorted(found, key=lambda pair: pair[0])]


def collect_items(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, recursive: bool = False
) -> list[BatchItem]:
    """The items of one or more inputs, in order. Each input is a folder (its images, sorted;
    ``recursive`` descends into subfolders), a ``.jsonl`` or ``.csv`` manifest (see
    ``read_manifest``), a glob pattern such as ``"scans/*.png"``, or a single image file (which
    is what a shell-expanded glob gives). Keys must be unique across all inputs.

    Raises ``OptionsError`` naming the input that does not exist or holds no images.
    """
    entries = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not entries:
        raise OptionsError("no inputs given: name a folder, a glob pattern, a manifest or image files")
    items: list[BatchItem] = []
    for entry in entries:
        items.extend(_items_from(os.fspath(entry), recursive))
    _check_unique_keys(items)
    return items


def _file_item(path: str, origin: str) -> BatchItem:
    return BatchItem(key=path, image=path, source=path, origin=origin)


def _items_from(text: str, recursive: bool) -> list[BatchItem]:
    path = Path(text)
    if path.is_dir():
        images = find_images(path, recursive=recursive)
        if not images:
            where = "or its subfolders " if recursive else ""
            raise OptionsError(
                f"no images in folder {text} {where}(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}"
                + ("" if recursive else "; use recursive (--recursive) to look in subfolders")
                + ")"
            )
        return [_file_item(str(image), f"folder {text}") for image in images]
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return read_manifest(path)
        return [_file_item(text, "command line")]
    if _GLOB_CHARACTERS.intersection(text):
        matches = sorted(m for m in glob.glob(text, recursive=True) if Path(m).is_file())
        if not matches:
            raise OptionsError(f"no files match the pattern {text!r}")
        return [_file_item(match, f"pattern {text}") for match in matches]
    raise OptionsError(f"input not found: {text} (expected a folder, a manifest, a glob pattern or an image)")


def _check_unique_keys(items: Sequence[BatchItem]) -> None:
    """Keys name results in the output file; two items with one key could not be told apart."""
    first: dict[str, BatchItem] = {}
    for item in items:
        earlier = first.setdefault(item.key, item)
        if earlier is not item:
            raise OptionsError(
                f"duplicate key {item.key!r} ({earlier.origin} and {item.origin}): give each item its own key"
            )


def read_manifest(path: str | os.PathLike[str]) -> list[BatchItem]:
    """The items listed in a manifest: a ``.jsonl`` file with one object per line, such as
    ``{"image": "a.png", "question": "...", "key": "..."}``, or a ``.csv`` file with a header row
    naming the columns ``image`` and optionally ``question`` and ``key``.

    Relative image paths are relative to the manifest's folder, so a manifest can move with its
    images. Blank JSONL lines and empty CSV cells are ignored; any other field is refused, so a
    misspelt "question" cannot silently be dropped. Errors are ``OptionsError`` naming the line.
    """
    manifest = Path(path)
    suffix = manifest.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise OptionsError(f"manifest {manifest}: expected a .jsonl or .csv file")
    try:
        # utf-8-sig: spreadsheet programs often start CSV files with a byte-order mark.
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise OptionsError(f"manifest not found: {manifest}") from exc
    except OSError as exc:
        raise OptionsError(f"cannot read manifest {manifest}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise OptionsError(
            f"manifest {manifest} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    rows = _jsonl_rows(manifest, text) if suffix == ".jsonl" else _csv_rows(manifest, text)
    items = [_manifest_item(manifest, line, row) for line, row in rows]
    if not items:
        raise OptionsError(f"manifest {manifest} lists no images")
    _check_unique_keys(items)
    return items


def _jsonl_rows(manifest: Path, text: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise OptionsError(f"{manifest} line {number}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise OptionsError(
                f'{manifest} line {number}: expected a JSON object like {{"image": "a.png"}}, '
                f"got {type(row).__name__}"
            )
        yield number, row


def _csv_rows(manifest: Path, text: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [name.strip().lower() for name in header]
        unknown = [name for name in columns if name not in _MANIFEST_FIELDS]
        if unknown or "image" not in columns or len(set(columns)) != len(columns):
            raise OptionsError(
                f"{manifest} line 1: the header must name the columns image[,question][,key] "
                f"(once each), got {','.join(header)!r}"
            )
        for cells in reader:
            number = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(columns):
                raise OptionsError(
                    f"{manifest} line {number}: {len(cells)} cells but the header has {len(columns)} "
                    "columns (quote cells that contain commas)"
                )
            yield number, {name: cell for name, cell in zip(columns, cells, strict=False) if cell.strip()}
    except csv.Error as exc:
        raise OptionsError(f"{manifest} line {reader.line_num}: malformed CSV ({exc})") from exc


def _optional_text(manifest: Path, number: int, row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise OptionsError(f"{manifest} line {number}: {name!r} must be a string, got {json.dumps(value)}")
    return value if value.strip() else None


def _manifest_item(manifest: Path, number: int, row: Mapping[str, Any]) -> BatchItem:
    origin = f"{manifest} line {number}"
    unknown = sorted(set(row) - set(_MANIFEST_FIELDS))
    if unknown:
        raise OptionsError(
            f"{origin}: unknown field(s) {', '.join(repr(name) for name in unknown)}; "
            f"allowed: {', '.join(_MANIFEST_FIELDS)}"
        )
    image = _optional_text(manifest, number, row, "image")
    if image is None:
        raise OptionsError(f"{origin}: no 'image' given")
    source = image if _is_remote(image) else str(manifest.parent / image)
    key = _optional_text(manifest, number, row, "key") or image
    return BatchItem(
        key=key,
        image=image,
        source=source,
        question=_optional_text(manifest, number, row, "question"),
        origin=origin,
    )


# --------------------------------------------------------------------------------------------
# Results


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


# --------------------------------------------------------------------------------------------
# The output file


def check_output(output: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to start a job that would clobber earlier results: an existing, non-empty output
    is only used with ``resume`` or ``overwrite``. Cheap, so callers can check before the
    slow part (loading a model) and not only when the job starts."""
    path = Path(output)
    if resume and overwrite:
        raise OptionsError("resume and overwrite exclude each other: continue the file or replace it")
    if path.is_dir():
        raise OptionsError(f"cannot write results to {path}: it is a folder")
    if not path.parent.is_dir():
        raise OptionsError(f"cannot write {path}: the folder {path.parent} does not exist")
    if not resume and not overwrite and path.is_file() and path.stat().st_size > 0:
        raise OptionsError(f"{path} already exists: resume it (--resume) or replace it (--overwrite)")


class _ResultsFile:
    """The JSON Lines output: opened once, locked against a second writer, appended to one
    whole line at a time with ``os.write`` + ``os.fsync``.

    One ``write`` call per line (on a file opened with O_APPEND) means that a process killed at
    any moment leaves either the whole line or a partial last line, never a hole or an
    interleaving; ``fsync`` means a finished line is on disk before the next item starts.
    """

    def __init__(self, path: Path, *, resume: bool, overwrite: bool) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.repaired_bytes = 0
        self._mark: int | None = None
        check_output(path, resume=resume, overwrite=overwrite)
        self._fd = self._open()
        try:
            if overwrite:
                os.ftruncate(self._fd, 0)
            elif resume:
                self._read_existing()
        except BaseException:
            self.close()
            raise

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except FileNotFoundError as exc:
            raise OptionsError(
                f"cannot write {self.path}: the folder {self.path.parent} does not exist"
            ) from exc
        except OSError as exc:
            raise OptionsError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; a second writer is not detected there.
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise OptionsError(f"{self.path} is being written by another running job") from exc
        return fd

    def _read_existing(self) -> None:
        """Load the finished lines; cut off a partial last line (a killed run's unfinished
        write) so that the next line starts on a line of its own."""
        good_end = 0
        with open(self.path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                if not raw.endswith(b"\n"):
                    self.repaired_bytes = len(raw)
                    break
                good_end += len(raw)
                if not raw.strip():
                    continue
                self.records.append(self._parse(raw, number))
        if self.repaired_bytes:
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)

    def _parse(self, raw: bytes, number: int) -> dict[str, Any]:
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise OptionsError(
                f"{self.path} line {number} is not valid JSON and is not the last line, so it was not "
                "left by an interrupted job: fix or delete that line, or use --overwrite"
            ) from exc
        if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
            raise OptionsError(
                f"{self.path} line {number} has no 'fingerprint': the file was not written by a "
                "phi3vision batch job; choose another output file"
            )
        return record

    def drop(self, fingerprints: set[str]) -> None:
        """Rewrite the file without the given records (failed items about to be retried).

        The new content goes to a temporary file that replaces the old one in one rename, so
        that a crash during the rewrite leaves either the old or the new file, never half of one.
        """
        kept = [r for r in self.records if r["fingerprint"] not in fingerprints]
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            for record in kept:
                file.write(_encode(record))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        os.close(self._fd)
        self._fd = self._open()
        self.records = kept

    def append(self, record: Mapping[str, Any]) -> None:
        data = _encode(record)
        written = os.write(self._fd, data)
        while written < len(data):  # a short write is possible in principle (full disk, signals)
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)

    def mark(self) -> None:
        """Remember where this run's lines start (see ``written_since_mark``)."""
        self._mark = os.lseek(self._fd, 0, os.SEEK_END)

    def written_since_mark(self) -> list[dict[str, Any]]:
        """The whole lines appended since ``mark()``, read back from the file. Counting from
        the file rather than in memory keeps the summary exact even when Ctrl-C lands between
        writing a line and counting it."""
        if self._mark is None:
            return []
        with open(self.path, "rb") as file:
            file.seek(self._mark)
            return [json.loads(raw) for raw in file if raw.endswith(b"\n") and raw.strip()]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _encode(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _content_digest(source: str) -> str:
    """What identifies an image's content for resuming: the sha256 of a local file's bytes
    (so an edited image is run again), or of the URL itself (a URL is not downloaded twice
    just to compute a key). An unreadable file is keyed by its path; it will fail when run."""
    if _is_remote(source):
        return "url:" + hashlib.sha256(source.encode("utf-8")).hexdigest()
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return "unreadable:" + hashlib.sha256(source.encode("utf-8")).hexdigest()
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The job


class BatchJob:
    """Run ``task`` over ``items`` with ``model``, appending one JSON line per item to ``output``.

    Each line holds the item's ``key``, its ``input`` (image as given, question), the ``task``,
    ``status`` ("done" or "failed"), the result fields ``text``, ``finish_reason``, ``usage``,
    ``timings``, ``model`` and ``error``, and a ``fingerprint``. A run writes its lines in input
    order; a resumed run appends the items it had left (the last line for a key is current). An
    item that fails (a broken image, a prompt too long) is recorded with its error and the job
    goes on.

    The fingerprint hashes the key, the image content (see ``_content_digest``) and every
    setting that changes the result: task, instruction or question, model id and revision,
    num_crops and the generation options. With ``resume=True`` an item whose fingerprint is
    already in the output is skipped, so an interrupted job continues where it stopped, and an
    item whose image or settings changed runs again, its new line appended after the old one
    (the last line of a key is the current one). Device, dtype and attention choices are not
    part of it: they change how a result is computed, not what was asked. Items recorded as
    failed are skipped too, unless ``retry_failed=True``, which removes the failed lines of
    this job's items and runs those items again.

    An existing, non-empty output is only touched with ``resume`` or ``overwrite``
    (``retry_failed`` implies ``resume``).
    ``KeyboardInterrupt`` stops the job between two lines and propagates; ``summary`` then
    says what was done.
    """

    def __init__(
        self,
        model: VisionModel,
        task: Task,
        items: Sequence[BatchItem],
        output: str | os.PathLike[str],
        *,
        question: str | None = None,
        batch_size: int = 4,
        options: GenerationOptions | Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        retry_failed: bool = False,
        progress: bool | None = None,
    ) -> None:
        if task not in TASKS:
            raise OptionsError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionsError(f"batch_size must be a positive int, got {batch_size!r}")
        if overwrite and (resume or retry_failed):
            raise OptionsError("resume and overwrite exclude each other: continue the file or replace it")
        if question is not None and (not isinstance(question, str) or not question.strip()):
            raise OptionsError("question must be a non-empty string")
        if task == "ask" and question is None:
            missing = next((item for item in items if item.question is None), None)
            if missing is not None:
                raise OptionsError(
                    f"the ask task needs a question: give one for all items (-q) or a 'question' "
                    f"for each item; {missing.key!r} ({missing.origin}) has none"
                )
        self.model = model
        self.task = task
        self.items = list(items)
        _check_unique_keys(self.items)
        self.output = Path(output)
        self.question = question
        self.batch_size = batch_size
        self.options = resolve_options(options, {})
        self.resume = resume or retry_failed
        self.overwrite = overwrite
        self.retry_failed = retry_failed
        self.progress = progress
        self._done = 0
        self._failed = 0
        self._skipped = 0
        self._skipped_failed = 0
        self._elapsed = 0.0
        self._interrupted = False
        self._repaired = 0
        self.failures: list[tuple[str, str]] = []
        """(key, error message) of each item that failed in the last run, in order."""

    @property
    def summary(self) -> BatchSummary:
        return BatchSummary(
            output=str(self.output),
            task=self.task,
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
        if self.task == "ask":
            question = item.question if item.question is not None else self.question
            assert question is not None  # checked in __init__
            return question
        prompts = self.model.task_prompts
        return prompts.describe if self.task == "describe" else prompts.extract_text

    def _settings(self) -> str:
        ref = self.model.model_ref
        return json.dumps(
            {
                "v": _RECORD_VERSION,
                "task": self.task,
                "model": ref.model_id,
                "revision": ref.revision,
                "num_crops": self.model.processor.num_crops,
                "options": self.options.model_dump(mode="json"),
            },
            sort_keys=True,
        )

    def fingerprint(self, item: BatchItem, settings: str | None = None) -> str:
        """The resume key of ``item`` under this job's settings (see the class docstring)."""
        parts = [item.key, _content_digest(item.source), self.instruction(item), settings or self._settings()]
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()

    def run(self) -> BatchSummary:
        """Process every item not yet in the output; return the summary."""
        self._done = self._failed = self._skipped = self._skipped_failed = 0
        self._interrupted = False
        self.failures = []
        started = time.perf_counter()
        out = _ResultsFile(self.output, resume=self.resume, overwrite=self.overwrite)
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

    def _plan(self, out: _ResultsFile) -> list[tuple[BatchItem, str]]:
        """The items to run with their fingerprints; counts the ones skipped. With
        ``retry_failed``, the failed lines of this job's items are removed first."""
        status = {record["fingerprint"]: record.get("status") for record in out.records}
        retry: set[str] = set()
        if self.retry_failed:
            keys = {item.key for item in self.items}
            retry = {
                record["fingerprint"]
                for record in out.records
                if record.get("status") == "failed" and record.get("key") in keys
            }
        settings = self._settings()
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

    def _count(self, out: _ResultsFile) -> None:
        """Done and failed counts, and the failures, from the lines this run wrote."""
        written = out.written_since_mark()
        failed = [record for record in written if record.get("status") == "failed"]
        self._done = len(written) - len(failed)
        self._failed = len(failed)
        self.failures = [
            (str(r.get("key")), str((r.get("error") or {}).get("message", "failed"))) for r in failed
        ]

    def _run_items(self, todo: Sequence[tuple[BatchItem, str]], out: _ResultsFile, started: float) -> None:
        from tqdm import tqdm

        out.mark()
        disable = None if self.progress is None else not self.progress
        with tqdm(total=len(todo), desc=self.task, unit="img", file=sys.stderr, disable=disable) as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                for (item, fingerprint), result in zip(chunk, self._generate(chunk), strict=True):
                    out.append(self._record(item, fingerprint, result))
                    if result.finish_reason == "error":
                        self._failed += 1  # for the progress bar; the summary recounts from the file
                    else:
                        self._done += 1
                self._elapsed = time.perf_counter() - started
                bar.update(len(chunk))
                if self._failed:
                    bar.set_postfix(failed=self._failed, refresh=False)

    def _generate(self, chunk: Sequence[tuple[BatchItem, str]]) -> list[Generation]:
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
                results[position] = failed_result(exc, self.model.model_ref)
        if prompts:
            generated = self.model.generate_batch(prompts, batch_size=self.batch_size, options=self.options)
            for position, result in zip(positions, generated, strict=True):
                results[position] = result
        return [r if r is not None else failed_result(RuntimeError("not run"), None) for r in results]

    def _record(self, item: BatchItem, fingerprint: str, result: Generation) -> dict[str, Any]:
        fields = result.model_dump(
            mode="json", include={"text", "finish_reason", "usage", "timings", "model", "error"}
        )
        return {
            "key": item.key,
            "input": {
                "image": item.image,
                "question": self.instruction(item) if self.task == "ask" else None,
            },
            "task": self.task,
            "status": "failed" if result.finish_reason == "error" else "done",
            **fields,
            "fingerprint": fingerprint,
        }


def run_batch(
    model: VisionModel,
    task: Task,
    items: Sequence[BatchItem],
    output: str | os.PathLike[str],
    *,
    question: str | None = None,
    batch_size: int = 4,
    options: GenerationOptions | Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    retry_failed: bool = False,
    progress: bool | None = None,
) -> BatchSummary:
    """``BatchJob(...).run()`` in one call; see ``BatchJob`` for the arguments."""
    job = BatchJob(
        model,
        task,
        items,
        output,
        question=question,
        batch_size=batch_size,
        options=options,
        resume=resume,
        overwrite=overwrite,
        retry_failed=retry_failed,
        progress=progress,
    )
    return job.run()
