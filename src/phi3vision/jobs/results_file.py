"""The crash-safe JSON Lines results file: one whole line per finished item, forced to disk.

A job over thousands of images runs for hours, so it must survive being stopped: every
finished item is written as one whole line with one ``os.write`` and ``os.fsync``, so that an
interrupted job (Ctrl-C, a crash, even SIGKILL) leaves a valid file, at worst with a partial
last line, which a resumed run cuts off. An advisory lock keeps a second job from writing the
same file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import OptionsError

__all__ = ["ResultsFile", "check_output", "encode_row"]


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


class ResultsFile:
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
                file.write(encode_row(record))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        os.close(self._fd)
        self._fd = self._open()
        self.records = kept

    def append(self, record: Mapping[str, Any]) -> None:
        data = encode_row(record)
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


def encode_row(record: Mapping[str, Any]) -> bytes:
    """One record as one whole line of compact UTF-8 JSON."""
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
