"""``phi3vision batch``: folders, manifests, failures, resume and crash safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from .conftest import IMAGES, MODEL_ARGS, REPO, Run, read_jsonl, write_truncated_png

NAMES = ["gray.png", "square336.png", "strip.png", "tiny.png"]
RECORD_FIELDS = {
    "key",
    "input",
    "task",
    "status",
    "text",
    "finish_reason",
    "usage",
    "timings",
    "model",
    "error",
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name in reversed(NAMES):  # created out of order: the job sorts
        shutil.copy(IMAGES / name, images / name)
    (images / "notes.txt").write_text("not an image")
    (images / ".hidden.png").write_bytes(b"editor leftover")
    return images


def test_batch_over_a_folder(cli: Callable[..., Run], folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    run = cli("batch", "describe", str(folder), "--out", str(out), "--batch-size", "3", *MODEL_ARGS)
    assert run.code == 0, run.err
    records = read_jsonl(out)
    assert [r["key"] for r in records] == [str(folder / name) for name in NAMES]
    for record in records:
        assert set(record) >= RECORD_FIELDS
        assert record["task"] == "describe" and record["status"] == "done" and record["error"] is None
        assert record["input"] == {"image": record["key"], "question": None}
        assert record["usage"]["completion_tokens"] == 6
    assert "finished: 4 items, 4 done, 0 failed, 0 skipped" in run.err
    # Batched output equals one-by-one output (greedy): compare with the describe command.
    single = cli("describe", str(folder / "tiny.png"), "--json", *MODEL_ARGS).json_lines()[0]
    assert records[-1]["text"] == single["text"]


def test_recursive_folder_with_a_glob(cli: Callable[..., Run], folder: Path, tmp_path: Path) -> None:
    nested = folder / "more"
    nested.mkdir()
    shutil.copy(IMAGES / "tiny.png", nested / "a.png")
    out = tmp_path / "deep.jsonl"
    run = cli("batch", "ocr", str(nested), str(folder / "s*.png"), "-r", "--out", str(out), *MODEL_ARGS)
    assert run.code == 0, run.err
    keys = [r["key"] for r in read_jsonl(out)]
    assert keys == [str(nested / "a.png"), str(folder / "square336.png"), str(folder / "strip.png")]


def test_jsonl_manifest_with_keys_and_questions(cli: Callable[..., Run], tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(IMAGES / "tiny.png", data / "tiny.png")
    manifest = data / "manifest.jsonl"
    manifest.write_text(
        json.dumps({"image": "tiny.png", "question": "What colour?", "key": "first"})
        + "\n\n"
        + json.dumps({"image": str(IMAGES / "gray.png")})
        + "\n"
    )
    out = tmp_path / "asked.jsonl"
    run = cli("batch", "ask", str(manifest), "-q", "Fallback question?", "--out", str(out), *MODEL_ARGS)
    assert run.code == 0, run.err
    first, second = read_jsonl(out)
    assert first["key"] == "first" and first["input"] == {"image": "tiny.png", "question": "What colour?"}
    assert second["key"] == str(IMAGES / "gray.png")  # the key defaults to the image as given
    assert second["input"]["question"] == "Fallback question?"
    # Relative paths are relative to the manifest, not to the working directory.
    ask = cli("ask", str(data / "tiny.png"), "-q", "What colour?", "--json", *MODEL_ARGS).json_lines()[0]
    assert first["text"] == ask["text"]


def test_csv_manifest_with_per_item_questions(cli: Callable[..., Run], tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "image,question,key\n"
        f'{IMAGES / "tiny.png"},"Is it red, or blue?",one\n'
        f"{IMAGES / 'gray.png'},How bright is it?,two\n"
    )
    out = tmp_path / "csv.jsonl"
    run = cli("batch", "ask", str(manifest), "--out", str(out), *MODEL_ARGS)
    assert run.code == 0, run.err
    records = read_jsonl(out)
    assert [(r["key"], r["input"]["question"]) for r in records] == [
        ("one", "Is it red, or blue?"),
        ("two", "How bright is it?"),
    ]
    assert all(r["status"] == "done" for r in records)


def test_ask_without_any_question_is_a_usage_error(
    cli: Callable[..., Run], folder: Path, tmp_path: Path
) -> None:
    run = cli("batch", "ask", str(folder), "--out", str(tmp_path / "x.jsonl"), *MODEL_ARGS)
    assert run.code == 2
    assert "ask needs -q QUESTION" in run.err
    assert not (tmp_path / "x.jsonl").exists()


def test_bad_manifest_line_is_named(cli: Callable[..., Run], tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png"}\n{"image": "b.png", "qustion": "typo"}\n')
    run = cli("batch", "describe", str(manifest), "--out", str(tmp_path / "o.jsonl"), *MODEL_ARGS)
    assert run.code == 1
    assert run.err.strip() == f"phi3vision: error: {manifest} line 2: unknown field(s) 'qustion'; " + (
        "allowed: image, question, key"
    )
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"image": "a.png"}\n{"image": \n')
    run = cli("batch", "describe", str(broken), "--out", str(tmp_path / "o.jsonl"), *MODEL_ARGS)
    assert run.code == 1 and f"{broken} line 2: not valid JSON" in run.err and "Traceback" not in run.err


def test_missing_input_is_named(cli: Callable[..., Run], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    run = cli("batch", "describe", str(missing), "--out", str(tmp_path / "o.jsonl"), *MODEL_ARGS)
    assert run.code == 1
    assert str(missing) in run.err and "Traceback" not in run.err


def test_broken_image_in_the_middle(cli: Callable[..., Run], folder: Path, tmp_path: Path) -> None:
    write_truncated_png(folder / "h_broken.png")  # sorts between gray and square336
    out = tmp_path / "results.jsonl"
    run = cli("batch", "describe", str(folder), "--out", str(out), "--batch-size", "2", *MODEL_ARGS)
    assert run.code == 1
    records = read_jsonl(out)
    assert [Path(r["key"]).name for r in records] == ["gray.png", "h_broken.png", *NAMES[1:]]
    failed = records[1]
    assert failed["status"] == "failed" and failed["finish_reason"] == "error"
    assert failed["error"]["type"] == "ImageError" and "h_broken.png" in failed["error"]["message"]
    assert all(r["status"] == "done" for r in records if r is not failed)
    assert "4 done, 1 failed" in run.err and "h_broken.png" in run.err
    # Resuming skips the recorded failure, and still says so with exit code 1.
    again = cli("batch", "describe", str(folder), "--out", str(out), "--resume", *MODEL_ARGS)
    assert again.code == 1 and "5 skipped (1 of them failed before" in again.err
    assert len(read_jsonl(out)) == 5


def test_retry_failed_replaces_the_failed_line(cli: Callable[..., Run], folder: Path, tmp_path: Path) -> None:
    broken = write_truncated_png(folder / "broken.png")
    out = tmp_path / "results.jsonl"
    assert cli("batch", "ocr", str(folder), "--out", str(out), *MODEL_ARGS).code == 1
    run = cli("batch", "ocr", str(folder), "--out", str(out), "--retry-failed", *MODEL_ARGS)
    assert run.code == 1 and "0 done, 1 failed, 4 skipped" in run.err
    records = read_jsonl(out)
    assert sorted(r["key"] for r in records) == sorted([str(broken), *(str(folder / n) for n in NAMES)])
    assert [r["status"] for r in records].count("failed") == 1  # replaced, not added
    # A repaired image has new content, so a plain --resume runs it again.
    shutil.copy(IMAGES / "tiny.png", broken)
    fixed = cli("batch", "ocr", str(folder), "--out", str(out), "--resume", *MODEL_ARGS)
    assert fixed.code == 0 and "1 done, 0 failed, 4 skipped" in fixed.err
    latest = {r["key"]: r for r in read_jsonl(out)}  # the last line of a key is the current one
    assert latest[str(broken)]["status"] == "done"


def test_existing_output_is_not_clobbered(cli: Callable[..., Run], folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text("precious\n")
    run = cli("batch", "describe", str(folder), "--out", str(out), *MODEL_ARGS)
    assert run.code == 1 and "already exists" in run.err
    assert out.read_text() == "precious\n"
    resumed = cli("batch", "describe", str(folder), "--out", str(out), "--resume", *MODEL_ARGS)
    assert resumed.code == 1 and "line 1 is not valid JSON" in resumed.err
    assert out.read_text() == "precious\n"


def test_resume_repairs_a_partial_last_line(cli: Callable[..., Run], folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    assert cli("batch", "describe", str(folder), "--out", str(out), *MODEL_ARGS).code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    # What a process killed in the middle of writing its third line leaves behind:
    out.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    run = cli("batch", "describe", str(folder), "--out", str(out), "--resume", *MODEL_ARGS)
    assert run.code == 0, run.err
    assert "2 done, 0 failed, 2 skipped" in run.err and "removed a partial last line" in run.err
    records = read_jsonl(out)
    assert sorted(r["key"] for r in records) == sorted(str(folder / n) for n in NAMES)
    assert out.read_bytes().startswith(b"".join(lines[:2]))  # finished lines untouched
    assert {r["text"] for r in records} == {json.loads(line)["text"] for line in lines}


def test_settings_change_runs_items_again(cli: Callable[..., Run], folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    assert cli("batch", "describe", str(folder), "--out", str(out), *MODEL_ARGS).code == 0
    longer = [*MODEL_ARGS[:-1], "7"]  # --max-new-tokens 7 instead of 6
    run = cli("batch", "describe", str(folder), "--out", str(out), "--resume", *longer)
    assert run.code == 0 and "4 done, 0 failed, 0 skipped" in run.err
    records = read_jsonl(out)
    assert len(records) == 8
    assert [r["usage"]["completion_tokens"] for r in records] == [6] * 4 + [7] * 4
    same = cli("batch", "describe", str(folder), "--out", str(out), "--resume", *longer)
    assert same.code == 0 and "0 done, 0 failed, 4 skipped" in same.err


SLOW_ARGS = [*MODEL_ARGS[:-1], "24"]  # more tokens per item: time to interrupt between lines


def _batch_process(folder: Path, out: Path, resume: bool = False) -> subprocess.Popen[str]:
    args = [*SLOW_ARGS, "--batch-size", "1", *(["--resume"] if resume else [])]  # one line per model call
    return subprocess.Popen(
        [sys.executable, "-m", "phi3vision", "batch", "describe", str(folder), "--out", str(out), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_lines(process: subprocess.Popen[str], out: Path, count: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"the batch process did not write {count} line(s): {process.communicate()[1]}")


COUNT = 12


@pytest.fixture
def many(tmp_path: Path) -> Path:
    images = tmp_path / "many"
    images.mkdir()
    for index in range(COUNT):
        shutil.copy(IMAGES / "tiny.png", images / f"img{index:02d}.png")
    return images


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_resume_after_sigkill(cli: Callable[..., Run], many: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    process = _batch_process(many, out)
    _wait_for_lines(process, out, 2)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    before = out.read_bytes()
    finished = before[: before.rfind(b"\n") + 1]
    assert 2 <= finished.count(b"\n") < COUNT, "the process must have been killed mid-run"
    run = cli("batch", "describe", str(many), "--out", str(out), "--resume", *SLOW_ARGS)
    assert run.code == 0, run.err
    records = read_jsonl(out)
    keys = [r["key"] for r in records]
    assert sorted(keys) == [str(many / f"img{index:02d}.png") for index in range(COUNT)]  # each exactly once
    assert out.read_bytes().startswith(finished)  # nothing finished before the kill was lost
    assert all(r["status"] == "done" for r in records)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_cleanly(cli: Callable[..., Run], many: Path, tmp_path: Path) -> None:
    """A real SIGINT, sent to this process once the first line is on disk; the handler raises
    KeyboardInterrupt only while the command runs, so a late signal cannot hit pytest."""
    out = tmp_path / "results.jsonl"
    running = threading.Event()
    running.set()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if running.is_set():
            raise KeyboardInterrupt

    def interrupt_after_first_line() -> None:
        deadline = time.monotonic() + 90
        while running.is_set() and time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 1:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.005)

    previous = signal.signal(signal.SIGINT, on_sigint)
    watcher = threading.Thread(target=interrupt_after_first_line)
    watcher.start()
    try:
        run = cli("batch", "describe", str(many), "--out", str(out), "--batch-size", "1", *SLOW_ARGS)
    finally:
        running.clear()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    assert run.code == 130
    assert "Traceback" not in run.err
    assert f"phi3vision: interrupted: {COUNT} items" in run.err and "not run" in run.err
    records = read_jsonl(out)  # whole lines only
    assert 1 <= len(records) < COUNT
    assert f", {len(records)} done, 0 failed" in run.err  # the summary matches the file
    assert "--resume" in run.err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_stops_with_the_same_summary_as_ctrl_c(many: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    process = _batch_process(many, out)
    _wait_for_lines(process, out, 1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    records = read_jsonl(out)
    assert 1 <= len(records) < COUNT
    assert f"phi3vision: interrupted: {COUNT} items, {len(records)} done, 0 failed" in err
    assert "not run" in err and "--resume" in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_points_then_resume_loses_nothing(many: Path, tmp_path: Path, seed: int) -> None:
    """Kill the batch process again and again at random moments (while loading, between lines,
    in the middle of a write), resuming each time; the output ends with every item exactly once,
    every line whole, and every finished line kept."""
    import random

    rng = random.Random(seed)
    out = tmp_path / "results.jsonl"
    kept = b""
    for _round in range(6):
        process = _batch_process(many, out, resume=out.exists())
        try:
            process.wait(timeout=rng.uniform(0.5, 4.0))  # model loading takes about a second
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        if out.exists():
            data = out.read_bytes()
            assert data.startswith(kept)  # a kill or a resume never loses a finished line
            kept = data[: data.rfind(b"\n") + 1]
        if process.returncode == 0:
            break
    final = _batch_process(many, out, resume=True)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert out.read_bytes().endswith(b"\n")
    records = read_jsonl(out)  # every line parses: no partial line anywhere
    keys = [r["key"] for r in records]
    assert sorted(keys) == [str(many / f"img{index:02d}.png") for index in range(COUNT)]  # each exactly once
    assert all(r["status"] == "done" for r in records)
