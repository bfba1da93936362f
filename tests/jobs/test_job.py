"""``phi3vision.jobs.job``: running a job (with the fake model), its lines, resume and summary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from phi3vision import OptionsError
from phi3vision.jobs import (
    BatchItem,
    BatchJob,
    BatchSummary,
    batch_settings,
    collect_items,
    result_row,
    run_batch,
)
from phi3vision.testing import FakeVisionModel

from ..cli.conftest import read_jsonl
from .conftest import IMAGES


def test_summary_text_and_status() -> None:
    summary = BatchSummary(
        output="o.jsonl", task="ocr", total=10, done=6, failed=1, skipped=2, elapsed_s=3.5, interrupted=True
    )
    assert summary.remaining == 1 and not summary.ok
    assert summary.items_per_second == pytest.approx(2.0)
    assert summary.describe() == (
        "interrupted: 10 items, 6 done, 1 failed, 2 skipped, 1 not run in 3.5 s (2.00 items/s) -> o.jsonl"
    )


def test_run_batch_from_python(fake: FakeVisionModel, tmp_path: Path) -> None:
    shutil.copy(IMAGES / "tiny.png", tmp_path / "a.png")
    shutil.copy(IMAGES / "tiny.png", tmp_path / "b.png")  # same content, another key
    items = collect_items(tmp_path)
    out = tmp_path / "out" / "r.jsonl"
    out.parent.mkdir()
    summary = run_batch(
        fake,
        "ask",
        items,
        out,
        question="What?",
        batch_size=2,
        options={"max_new_tokens": 4},
        progress=False,
    )
    assert summary.ok and (summary.done, summary.failed, summary.skipped) == (2, 0, 0)
    first, second = read_jsonl(out)
    assert first["text"] == second["text"]  # identical images, greedy
    assert first["fingerprint"] != second["fingerprint"]  # but two items, each resumable on its own
    expected = fake.ask("What?", str(tmp_path / "a.png"), max_new_tokens=4)
    assert first["text"] == expected.text
    batch = [call for call in fake.calls if call.method == "generate_batch"]
    assert [call.batch_index for call in batch] == [0, 1]  # one model call for the two items
    assert all("What?" in call.prompt and call.options.max_new_tokens == 4 for call in batch)


def test_fingerprint_follows_content_and_settings(fake: FakeVisionModel, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    shutil.copy(IMAGES / "tiny.png", image)
    [item] = collect_items(image)
    out = tmp_path / "r.jsonl"

    def fingerprint(task: str = "describe", **options: int) -> str:
        job = BatchJob(fake, task, [item], out, question="Q?", options=options)  # type: ignore[arg-type]
        return job.fingerprint(item)

    base = fingerprint()
    assert fingerprint() == base
    assert fingerprint(max_new_tokens=5) != base
    assert fingerprint("ocr") != base
    shutil.copy(IMAGES / "gray.png", image)
    assert fingerprint() != base


def test_job_argument_errors(fake: FakeVisionModel, tmp_path: Path) -> None:
    item = BatchItem(key="a", image="a.png", source="a.png")
    out = tmp_path / "r.jsonl"
    with pytest.raises(OptionsError, match="unknown task"):
        BatchJob(fake, "caption", [item], out)  # type: ignore[arg-type]
    with pytest.raises(OptionsError, match="needs a question"):
        BatchJob(fake, "ask", [item], out)
    with pytest.raises(OptionsError, match="batch_size"):
        BatchJob(fake, "describe", [item], out, batch_size=0)
    with pytest.raises(OptionsError, match="invalid generation options"):
        BatchJob(fake, "describe", [item], out, options={"max_new_tokens": 0})


def test_rows_are_result_row_and_name_the_instruction(fake: FakeVisionModel, two_images: Path) -> None:
    fake.script({"Read all the text": "TEXT"})
    items = collect_items(two_images)
    out = two_images.parent / "r.jsonl"
    job = BatchJob(fake, "ocr", items, out, progress=False)
    assert job.run().ok
    rows = read_jsonl(out)
    assert [row["text"] for row in rows] == ["TEXT", "TEXT"]  # the ocr instruction was asked
    assert rows[0]["input"] == {"image": items[0].image, "question": None}
    assert rows[0]["task"] == "extract_text"  # one name for the task everywhere, "ocr" is its alias
    [first_call, *_] = fake.calls
    assert first_call.result is not None
    assert rows[0] == result_row(job.settings, items[0], rows[0]["fingerprint"], first_call.result)


def test_resume_skips_what_is_done(fake: FakeVisionModel, two_images: Path) -> None:
    items = collect_items(two_images)
    out = two_images.parent / "r.jsonl"
    assert run_batch(fake, "describe", items[:1], out, progress=False).done == 1
    again = run_batch(fake, "describe", items, out, resume=True, progress=False)
    assert (again.done, again.skipped) == (1, 1)
    assert [row["key"] for row in read_jsonl(out)] == [item.key for item in items]
    with pytest.raises(OptionsError, match="already exists"):
        run_batch(fake, "describe", items, out, progress=False)


def test_a_job_from_settings(fake: FakeVisionModel, tmp_path: Path) -> None:
    item = BatchItem(key="a", image="a.png", source="a.png", question="Mine?")
    settings = batch_settings("ask", question="Q?", batch_size=3, retry_failed=True)
    job = BatchJob.from_settings(fake, settings, [item], tmp_path / "r.jsonl")  # type: ignore[arg-type]
    assert job.settings == settings
    assert (job.task, job.question, job.batch_size, job.resume, job.retry_failed) == (
        "ask",
        "Q?",
        3,
        True,
        True,
    )
    assert job.instruction(item) == "Mine?"
