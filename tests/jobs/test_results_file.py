"""``phi3vision.jobs.results_file``: the output checks, the lock and the repair of a cut line."""

from __future__ import annotations

from pathlib import Path

import pytest

from phi3vision import OptionsError
from phi3vision.jobs import check_output
from phi3vision.jobs.results_file import ResultsFile, encode_row


def test_check_output(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    check_output(out)  # a new file is fine
    out.write_text("x\n")
    with pytest.raises(OptionsError, match="already exists"):
        check_output(out)
    check_output(out, resume=True)
    check_output(out, overwrite=True)
    with pytest.raises(OptionsError, match="does not exist"):
        check_output(tmp_path / "missing" / "o.jsonl")
    with pytest.raises(OptionsError, match="exclude each other"):
        check_output(out, resume=True, overwrite=True)


def test_resume_cuts_a_partial_last_line_and_appends_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    whole = encode_row({"key": "a", "fingerprint": "f1"})
    out.write_bytes(whole + b'{"key": "b", "finger')  # a killed run's unfinished write
    results = ResultsFile(out, resume=True, overwrite=False)
    try:
        assert results.repaired_bytes == len(b'{"key": "b", "finger')
        assert results.records == [{"key": "a", "fingerprint": "f1"}]
        results.mark()
        results.append({"key": "b", "fingerprint": "f2"})
        assert results.written_since_mark() == [{"key": "b", "fingerprint": "f2"}]
    finally:
        results.close()
    assert out.read_bytes() == whole + encode_row({"key": "b", "fingerprint": "f2"})


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")  # advisory locks are POSIX only
    out = tmp_path / "o.jsonl"
    first = ResultsFile(out, resume=False, overwrite=False)
    try:
        with pytest.raises(OptionsError, match="being written by another running job"):
            ResultsFile(out, resume=True, overwrite=False)
    finally:
        first.close()


def test_a_foreign_file_is_not_resumed(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text('{"name": "not ours"}\n')
    with pytest.raises(OptionsError, match="line 1 has no 'fingerprint'"):
        ResultsFile(out, resume=True, overwrite=False)
