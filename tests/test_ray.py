"""phi3vision.ray on a local Ray cluster that this file starts (2 CPUs, 127.0.0.1 only) and
stops: greedy rows equal the in-process batch job's, row by row, broken image and URL included.

Skipped when Ray is not installed (pip install 'phi3vision[ray]'). Ray's own DataContext warns
about its own deprecated fields when it is created; that is not a call of ours.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from phi3vision import ImagePolicy, OptionsError, VisionModel
from phi3vision.jobs import BatchItem, run_batch

from .conftest import GOLDEN, GOLDEN_CHECKPOINT

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'phi3vision[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'phi3vision[ray]'")

from phi3vision.ray import VisionPredictor, finished_keys, map_images  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

IMAGES = GOLDEN / "images"
MODEL = {"device": "cpu", "dtype": "float32"}
GENERATION = {"max_new_tokens": 6}
TIMING_FREE = ("timings", "fingerprint")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    saved = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no report to the network
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=150 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = saved


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """The golden images over HTTP on 127.0.0.1, stopped at the end."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(IMAGES))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, image_server: str) -> list[str]:
    folder = tmp_path_factory.mktemp("ray-images")
    broken = folder / "broken.png"
    data = (IMAGES / "tiny.png").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    return [
        str(IMAGES / "square336.png"),
        str(broken),
        f"{image_server}/chart_wide.png",
        str(IMAGES / "team_a.png"),
    ]


def in_process_rows(
    model: VisionModel, task: str, sources: list[str], tmp_path: Path, **kw: Any
) -> list[dict]:
    items = [BatchItem(key=s, image=s, source=s) for s in sources]
    out = tmp_path / "in-process.jsonl"
    run_batch(model, task, items, out, options=GENERATION, progress=False, **kw)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def without(row: dict[str, Any], names: tuple[str, ...] = TIMING_FREE) -> dict[str, Any]:
    return {name: value for name, value in row.items() if name not in names}


def test_rows_equal_the_in_process_batch_job(
    local_ray: Any, cpu_model: VisionModel, sources: list[str], tmp_path: Path
) -> None:
    expected = in_process_rows(cpu_model, "describe", sources, tmp_path)
    ds = local_ray.data.from_items([{"image": source} for source in sources])
    out = map_images(
        ds,
        task="describe",
        model=GOLDEN_CHECKPOINT,
        load_options={"image_policy": ImagePolicy(allow_private_urls=True)},
        concurrency=2,
        **MODEL,
        **GENERATION,
    )
    rows = out.take_all()
    assert [without(row) for row in rows] == [without(row) for row in expected]
    assert [row["status"] for row in rows] == ["done", "failed", "done", "done"]
    assert rows[1]["error"]["type"] == "ImageError"
    assert rows[2]["key"].startswith("http://127.0.0.1:")


def test_bytes_rows_ask_per_row_questions_and_resume(
    local_ray: Any, cpu_model: VisionModel, sources: list[str], tmp_path: Path
) -> None:
    local = [s for s in sources if not s.startswith("http")]
    ds = local_ray.data.from_items(
        [{"bytes": Path(s).read_bytes(), "path": s, "question": f"What is in {Path(s).name}?"} for s in local]
    )
    first = map_images(
        ds, task="ask", model=GOLDEN_CHECKPOINT, keep_columns=["question"], **MODEL, **GENERATION
    ).materialize()
    rows = first.take_all()
    assert [row["key"] for row in rows] == local
    assert [row["input"] for row in rows] == [
        {"image": s, "question": f"What is in {Path(s).name}?"} for s in local
    ]
    assert [row["question"] for row in rows] == [row["input"]["question"] for row in rows]
    assert [row["status"] for row in rows] == ["done", "failed", "done"]
    direct = cpu_model.ask(rows[0]["input"]["question"], local[0], **GENERATION)
    assert rows[0]["text"] == direct.text

    results = tmp_path / "results"
    first.write_json(str(results))
    assert finished_keys(results) == set(local)
    assert finished_keys(results, retry_failed=True) == {local[0], local[2]}
    again = map_images(
        ds, task="ask", model=GOLDEN_CHECKPOINT, resume_from=results, retry_failed=True, **MODEL, **GENERATION
    )
    assert [row["key"] for row in again.take_all()] == [local[1]]


def test_settings_that_would_hang_or_are_wrong_fail_on_the_driver(local_ray: Any) -> None:
    ds = local_ray.data.from_items([{"image": str(IMAGES / "tiny.png")}])
    with pytest.raises(OptionsError, match="would hang"):
        map_images(ds, model=GOLDEN_CHECKPOINT, concurrency=2, num_cpus=1)
    with pytest.raises(OptionsError, match="unknown load option 'devic'"):
        map_images(ds, model=GOLDEN_CHECKPOINT, load_options={"devic": "cpu"})
    with pytest.raises(OptionsError, match="max_new_tokens"):
        map_images(ds, model=GOLDEN_CHECKPOINT, max_new_tokens=0)
    for task in ("caption", "extract"):
        with pytest.raises(
            OptionsError, match=rf"map_images runs the tasks describe, extract_text, ask, not '{task}'"
        ):
            map_images(ds, task=task, model=GOLDEN_CHECKPOINT)
    with pytest.raises(OptionsError, match="whole number"):
        map_images(ds, model=GOLDEN_CHECKPOINT, num_gpus=1.5)


def test_predictor_names_a_missing_image_column_and_fails_rows_without_an_image() -> None:
    predictor = VisionPredictor(GOLDEN_CHECKPOINT, **MODEL, options=GENERATION)
    with pytest.raises(OptionsError, match="no image column"):
        predictor({"picture": ["a.png"]})
    rows = predictor({"path": [None, str(IMAGES / "tiny.png")]})
    assert rows["status"] == ["failed", "done"]
    assert rows["error"][0]["message"] == "the row has no image"


def test_batch_command_with_the_ray_executor_writes_the_same_file_and_resumes(
    local_ray: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from phi3vision.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, source in [("a1.png", "square336.png"), ("a2.png", "strip.png"), ("b1.png", "team_b.png")]:
        (folder / name).write_bytes((IMAGES / source).read_bytes())
    data = (IMAGES / "tiny.png").read_bytes()
    (folder / "b2.png").write_bytes(data[: len(data) // 2])
    common = [
        "--model", str(GOLDEN_CHECKPOINT), "--device", "cpu", "--dtype", "float32",
        "--num-crops", "1", "--max-new-tokens", "6", "--batch-size", "2",
    ]  # fmt: skip
    local, distributed = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["batch", "describe", str(folder), "--out", str(local), *common]) == 1  # b2 failed
    # Half the job in-process, the rest resumed on Ray: one file, as if run in one go.
    assert main(["batch", "describe", str(folder / "a*.png"), "--out", str(distributed), *common]) == 0
    capsys.readouterr()
    code = main(
        [
            "batch",
            "describe",
            str(folder),
            "--out",
            str(distributed),
            "--resume",
            "--executor",
            "ray",
            *common,
        ]
    )
    assert code == 1
    assert "4 items, 1 done, 1 failed, 2 skipped" in capsys.readouterr().err
    expected = [json.loads(line) for line in local.read_text(encoding="utf-8").splitlines()]
    written = [json.loads(line) for line in distributed.read_text(encoding="utf-8").splitlines()]
    assert [without(row, ("timings",)) for row in written] == [without(row, ("timings",)) for row in expected]
    assert [row["status"] for row in written] == ["done", "done", "done", "failed"]


def test_ray_options_need_the_ray_executor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from phi3vision.cli import main

    args = ["batch", "describe", str(IMAGES / "tiny.png"), "--out", str(tmp_path / "o.jsonl")]
    assert main([*args, "--ray-address", "127.0.0.1:6379"]) == 2
    assert "--ray-address needs --executor ray" in capsys.readouterr().err


def test_without_ray_one_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from phi3vision.cli import main
    from phi3vision.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'phi3vision\[ray\]'"):
        map_images(object(), model=GOLDEN_CHECKPOINT)  # type: ignore[arg-type]
    out = str(tmp_path / "o.jsonl")
    assert main(["batch", "describe", str(IMAGES / "tiny.png"), "--out", out, "--executor", "ray"]) == 1
    assert "pip install 'phi3vision[ray]'" in capsys.readouterr().err
