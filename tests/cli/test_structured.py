"""``phi3vision extract --schema``, ``ask --choices`` and ``batch extract --schema``: answers
constrained by the grammar, on the tiny random-weight checkpoint."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from phi3vision.constraints import backend_available

from .conftest import IMAGES, MODEL_ARGS, Run, read_jsonl

pytestmark = pytest.mark.skipif(not backend_available(), reason="the grammar extra is not installed")

SCHEMA = {
    "type": "object",
    "properties": {
        "indoor": {"type": "boolean"},
        "people": {"type": "integer", "minimum": 0, "maximum": 9},
        "mood": {"enum": ["calm", "busy"]},
    },
    "required": ["indoor", "people", "mood"],
}
BUDGET = ["--max-new-tokens", "40"]  # after MODEL_ARGS: the last one wins


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "scene.schema.json"
    path.write_text(json.dumps(SCHEMA), encoding="utf-8")
    return path


def test_extract_prints_one_valid_object_per_image(cli: Callable[..., Run], schema_file: Path) -> None:
    images = [str(IMAGES / "tiny.png"), str(IMAGES / "gray.png")]
    run = cli("extract", *images, "--schema", str(schema_file), *MODEL_ARGS, *BUDGET)
    assert run.code == 0, run.err
    objects = run.json_lines()
    assert len(objects) == 2
    for value in objects:
        jsonschema.validate(value, SCHEMA)


def test_extract_out_of_tokens_prints_null_and_says_why(cli: Callable[..., Run], schema_file: Path) -> None:
    run = cli("extract", str(IMAGES / "tiny.png"), "--schema", str(schema_file), *MODEL_ARGS)  # 6 tokens
    assert run.code == 1
    assert run.out.strip() == "null"
    assert "raise max_new_tokens" in run.err


def test_a_schema_that_cannot_be_enforced_is_a_usage_error(cli: Callable[..., Run], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "array", "uniqueItems": True}), encoding="utf-8")
    run = cli("extract", str(IMAGES / "tiny.png"), "--schema", str(bad), *MODEL_ARGS)
    assert run.code == 2 and "'uniqueItems'" in run.err
    bad.write_text("[1, 2]", encoding="utf-8")
    run = cli("extract", str(IMAGES / "tiny.png"), "--schema", str(bad), *MODEL_ARGS)
    assert run.code == 2 and "holds no JSON object" in run.err


def test_ask_with_choices_answers_one_of_them(cli: Callable[..., Run]) -> None:
    run = cli("ask", str(IMAGES / "tiny.png"), "-q", "Red or blue?", "--choices", "red,blue", *MODEL_ARGS)
    assert run.code == 0, run.err
    assert run.out.strip() in {"red", "blue"}
    run = cli("ask", "-q", "Red?", "--choices", "red,", *MODEL_ARGS)
    assert run.code == 2 and "non-empty" in run.err


def test_batch_extract_writes_validated_objects(
    cli: Callable[..., Run], schema_file: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("gray.png", "tiny.png"):
        shutil.copy(IMAGES / name, folder / name)
    out = tmp_path / "scenes.jsonl"
    run = cli(
        "batch", "extract", str(folder), "--schema", str(schema_file), "-o", str(out), *MODEL_ARGS, *BUDGET
    )
    assert run.code == 0, run.err
    records = read_jsonl(out)
    assert [r["status"] for r in records] == ["done", "done"]
    for record in records:
        jsonschema.validate(record["value"], SCHEMA)
        assert record["value"] == json.loads(record["text"])
    # Too few tokens: the items fail (they can be retried with a larger budget), the file stays valid.
    short = tmp_path / "short.jsonl"
    run = cli("batch", "extract", str(folder), "--schema", str(schema_file), "-o", str(short), *MODEL_ARGS)
    assert run.code == 1
    assert all(
        r["status"] == "failed" and "ran out of tokens" in r["error"]["message"] for r in read_jsonl(short)
    )


def test_batch_extract_needs_a_schema_and_only_extract_takes_one(
    cli: Callable[..., Run], schema_file: Path, tmp_path: Path
) -> None:
    out = str(tmp_path / "out.jsonl")
    run = cli("batch", "extract", str(IMAGES / "tiny.png"), "-o", out, *MODEL_ARGS)
    assert run.code == 2 and "needs --schema" in run.err
    run = cli(
        "batch", "describe", str(IMAGES / "tiny.png"), "--schema", str(schema_file), "-o", out, *MODEL_ARGS
    )
    assert run.code == 2 and "--schema goes with the extract task" in run.err
