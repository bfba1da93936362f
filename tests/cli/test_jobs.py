"""``phi3vision.jobs`` from Python: inputs, manifests, the output file and the summary."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from phi3vision import OptionsError, VisionModel
from phi3vision.jobs import (
    BatchItem,
    BatchJob,
    BatchSummary,
    check_output,
    collect_items,
    read_manifest,
    run_batch,
)

from ..conftest import GOLDEN_CHECKPOINT
from .conftest import IMAGES, read_jsonl


@pytest.fixture(scope="module")
def model() -> Iterator[VisionModel]:
    with VisionModel.from_pretrained(GOLDEN_CHECKPOINT, device="cpu", dtype="float32", num_crops=1) as vm:
        yield vm


def test_folder_items_are_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.txt", ".d.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.webp").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "f.png").write_bytes(b"x")
    assert [Path(i.key).name for i in collect_items(tmp_path)] == ["a.jpg", "b.PNG"]
    deep = collect_items(str(tmp_path), recursive=True)
    assert [Path(i.key).relative_to(tmp_path).as_posix() for i in deep] == ["a.jpg", "b.PNG", "sub/e.webp"]
    assert all(i.source == i.key == i.image for i in deep)


def test_glob_patterns(tmp_path: Path) -> None:
    for name in ("b.png", "a.png", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [Path(i.key).name for i in collect_items(str(tmp_path / "*.png"))] == ["a.png", "b.png"]
    assert [Path(i.key).name for i in collect_items(str(tmp_path / "**" / "*.png"))] == [
        "a.png",
        "b.png",
        "d.png",
    ]
    with pytest.raises(OptionsError, match="no files match"):
        collect_items(str(tmp_path / "*.gif"))
    with pytest.raises(OptionsError, match="input not found"):
        collect_items(str(tmp_path / "missing.png"))


def test_empty_folder_and_duplicates_are_errors(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="no images in folder"):
        collect_items(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(OptionsError, match="duplicate key"):
        collect_items([tmp_path, tmp_path / "a.png"])
    with pytest.raises(OptionsError, match="no inputs"):
        collect_items([])


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "sub" / "list.jsonl"
    manifest.parent.mkdir()
    manifest.write_text(
        '{"image": "a.png"}\n'
        '{"image": "https://example.com/b.png?sig=1", "question": "Q?"}\n'
        '{"image": "/abs/c.png", "key": "c", "question": ""}\n'
    )
    a, b, c = read_manifest(manifest)
    assert a == BatchItem(key="a.png", image="a.png", source=str(manifest.parent / "a.png"), origin=a.origin)
    assert a.origin == f"{manifest} line 1"
    assert b.source == "https://example.com/b.png?sig=1" and b.question == "Q?"
    assert c.key == "c" and c.source == "/abs/c.png" and c.question is None


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        (".jsonl", '{"image": "a.png"}\n[1, 2]\n', "line 2: expected a JSON object"),
        (".jsonl", '{"question": "q"}\n', "line 1: no 'image' given"),
        (".jsonl", '{"image": 5}\n', "line 1: 'image' must be a string"),
        (".jsonl", '{"image": "a.png"}\n{"image": "a.png"}\n', "duplicate key 'a.png'"),
        (".jsonl", "\n\n", "lists no images"),
        (".csv", "picture,question\na.png,q\n", "line 1: the header must name the columns"),
        (".csv", "image,question\na.png,q,extra\n", "line 2: 3 cells but the header has 2"),
        (".csv", "image,key\n,k\n", "line 2: no 'image' given"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path: Path, suffix: str, content: str, message: str) -> None:
    manifest = tmp_path / f"m{suffix}"
    manifest.write_text(content)
    with pytest.raises(OptionsError, match=message) as caught:
        read_manifest(manifest)
    assert str(manifest) in str(caught.value)


def test_csv_manifest_with_bom_and_quoted_commas(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes('\ufeffImage,Question\r\na.png,"Red, or blue?"\r\nb.png,\r\n'.encode())
    a, b = read_manifest(manifest)
    assert a.question == "Red, or blue?" and b.question is None
    assert a.origin.endswith("line 2") and b.origin.endswith("line 3")


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


def test_summary_text_and_status() -> None:
    summary = BatchSummary(
        output="o.jsonl", task="ocr", total=10, done=6, failed=1, skipped=2, elapsed_s=3.5, interrupted=True
    )
    assert summary.remaining == 1 and not summary.ok
    assert summary.items_per_second == pytest.approx(2.0)
    assert summary.describe() == (
        "interrupted: 10 items, 6 done, 1 failed, 2 skipped, 1 not run in 3.5 s (2.00 items/s) -> o.jsonl"
    )


def test_run_batch_from_python(model: VisionModel, tmp_path: Path) -> None:
    shutil.copy(IMAGES / "tiny.png", tmp_path / "a.png")
    shutil.copy(IMAGES / "tiny.png", tmp_path / "b.png")  # same content, another key
    items = collect_items(tmp_path)
    out = tmp_path / "out" / "r.jsonl"
    out.parent.mkdir()
    summary = run_batch(
        model,
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
    expected = model.ask("What?", str(tmp_path / "a.png"), max_new_tokens=4)
    assert first["text"] == expected.text


def test_fingerprint_follows_content_and_settings(model: VisionModel, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    shutil.copy(IMAGES / "tiny.png", image)
    [item] = collect_items(image)
    out = tmp_path / "r.jsonl"

    def fingerprint(task: str = "describe", **options: int) -> str:
        job = BatchJob(model, task, [item], out, question="Q?", options=options)  # type: ignore[arg-type]
        return job.fingerprint(item)

    base = fingerprint()
    assert fingerprint() == base
    assert fingerprint(max_new_tokens=5) != base
    assert fingerprint("ocr") != base
    shutil.copy(IMAGES / "gray.png", image)
    assert fingerprint() != base


def test_job_argument_errors(model: VisionModel, tmp_path: Path) -> None:
    item = BatchItem(key="a", image="a.png", source="a.png")
    out = tmp_path / "r.jsonl"
    with pytest.raises(OptionsError, match="unknown task"):
        BatchJob(model, "caption", [item], out)  # type: ignore[arg-type]
    with pytest.raises(OptionsError, match="needs a question"):
        BatchJob(model, "ask", [item], out)
    with pytest.raises(OptionsError, match="batch_size"):
        BatchJob(model, "describe", [item], out, batch_size=0)
    with pytest.raises(OptionsError, match="invalid generation options"):
        BatchJob(model, "describe", [item], out, options={"max_new_tokens": 0})
