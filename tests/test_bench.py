"""Smoke test of ``python -m phi3vision.bench``: every section runs on the tiny random-weight model
and reports numbers in the documented structure. Timings are never asserted: they depend on the
machine and on whatever else it runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest

from phi3vision.bench import SECTION_TITLES, SECTIONS, build_parser, main, num

SMALL = [
    "--size",
    "tiny",
    "--runs",
    "1",
    "--max-new-tokens",
    "3",
    "--batch-sizes",
    "1,2",
    "--image-size",
    "336x336",
    "--num-crops",
    "1",
    "--image-sizes",
    "336x336,800x600",
    "--crops",
    "1,2",
]
"""The smallest settings that still run every path: two batch sizes, two preprocessing rows."""

REQUIRED: dict[str, list[str]] = {
    "vision": ["views", "image_tokens", "seconds", "views_per_s"],
    "prefill": ["prompt_tokens", "time_to_first_token_s", "preprocess_s"],
    "decode": ["tokens_per_s", "ms_per_token", "wall_check_tokens_per_s", "time_to_first_token_s"],
    "compile": ["tokens_per_s", "load_s", "first_call_s", "compile_s", "speedup_vs_default"],
    "chat": [
        "turn2_reused_tokens",
        "turn1_time_to_first_token_s",
        "turn2_reuse_time_to_first_token_s",
        "turn2_reuse_preprocess_s",
        "turn2_cold_time_to_first_token_s",
        "turn1_over_turn2",
        "turn2_cold_over_reuse",
    ],
    "memory": ["weights_bytes", "rss_after_load_bytes", "call_peak_rss_bytes", "call_added_rss_bytes"],
    "loading": ["weights_bytes", "rss_before_bytes", "peak_rss_bytes", "added_rss_over_weights", "load_s"],
}
"""Keys that must hold a number (or a stat of numbers) in each section."""

PREPROCESS_ROW = [
    "floor_s",
    "transform_s",
    "encode_s",
    "fingerprint_s",
    "transform_vs_floor",
    "encode_vs_floor",
]
BATCH_ROW = ["call_s", "tokens_per_s", "decode_tokens_per_s", "time_to_first_token_s"]


def _check_number(value: Any, where: str) -> None:
    """A plain finite number, or a stat: median, min and max of finite runs, in order."""
    if isinstance(value, dict):
        assert value["runs"] == len(value["values"]) >= 1, where
        for key in ("median", "min", "max"):
            _check_number(value[key], f"{where}.{key}")
        assert value["min"] <= value["median"] <= value["max"], where
        return
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r}"
    assert math.isfinite(value), f"{where}: {value!r}"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One run of every section in a fresh process (the benchmark sets torch's thread count and
    compiles; neither should leak into this test session)."""
    directory = tmp_path_factory.mktemp("bench")
    report_file = directory / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "phi3vision.bench", *SMALL, "--threads", "1", "--json", str(report_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    last_line = done.stdout.strip().splitlines()[-1]
    return done.stdout, json.loads(last_line), json.loads(report_file.read_text())


def test_every_section_reports_numbers(bench_run: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    _, report, _ = bench_run
    assert set(report["sections"]) == set(SECTIONS)
    for name, body in report["sections"].items():
        assert "error" not in body and "skipped" not in body, f"{name}: {body}"
        for key in REQUIRED.get(name, []):
            _check_number(body[key], f"{name}.{key}")
    rows = report["sections"]["preprocess"]["rows"]
    assert [(r["image"], r["num_crops"]) for r in rows] == [
        ("336x336", 1),
        ("336x336", 2),
        ("800x600", 1),
        ("800x600", 2),
    ]
    for row in rows:
        for key in PREPROCESS_ROW:
            _check_number(row[key], f"preprocess.{key}")
    batch = report["sections"]["batch"]["rows"]
    assert [r["batch_size"] for r in batch] == [1, 2]
    for row in batch:
        assert row["generated_tokens"] == 3 * row["batch_size"]
        for key in BATCH_ROW:
            _check_number(row[key], f"batch.{key}")
    assert report["sections"]["chat"]["turn2_reused_tokens"] > 0


def test_machine_and_settings_are_recorded(bench_run: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    _, report, _ = bench_run
    machine = report["machine"]
    for key in ("platform", "python", "torch", "transformers", "cpu_count", "cpu_model", "torch_threads"):
        assert machine[key], key
    assert machine["torch_threads"] == 1
    settings = report["settings"]
    assert settings["device"] == "cpu" and settings["dtype"] and settings["attn"]
    assert settings["runs"] == 1 and settings["num_crops"] == 1 and settings["max_new_tokens"] == 3
    assert report["command"].startswith("python -m phi3vision.bench --size tiny")


def test_markdown_tables_and_json_file(bench_run: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    stdout, report, from_file = bench_run
    assert from_file == report
    for name in SECTIONS:
        assert f"## {SECTION_TITLES[name]}" in stdout
    assert stdout.count("|---|") >= len(SECTIONS) + 1  # one table per section plus the machine's


def test_compile_can_be_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SMALL, "--sections", "compile", "--no-compile"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["sections"] == {"compile": {"skipped": "--no-compile"}}
    assert "Skipped: --no-compile." in stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--sections", "decode,bogus"],
        ["--batch-sizes", "0"],
        ["--image-size", "12"],
        ["--model", "x", "--size", "mid"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2


def test_numbers_are_written_without_exponents() -> None:
    assert [num(v) for v in (0.0, 0.000123, 0.5, 3.14159, 42.42, 12345.6, None)] == [
        "0",
        "0.000123",
        "0.5",
        "3.14",
        "42.4",
        "12,346",
        "n/a",
    ]


def test_every_section_module_is_listed() -> None:
    """A section written in its own module runs only once ``bench/sections.py`` lists it."""
    import importlib
    import pkgutil

    import phi3vision.bench
    from phi3vision.bench import Section
    from phi3vision.bench.sections import ALL, OPT_IN

    defined = set()
    for info in pkgutil.iter_modules(phi3vision.bench.__path__):
        if info.name == "__main__":
            continue
        module = importlib.import_module(f"phi3vision.bench.{info.name}")
        defined |= {value.name for value in vars(module).values() if isinstance(value, Section)}
    assert defined == {section.name for section in (*ALL, *OPT_IN)}
    assert {section.name for section in ALL} == set(SECTIONS)


def test_sizes_say_how_long_they_take() -> None:
    assert "mid (minutes on a small CPU)" in " ".join(build_parser().format_help().split())
