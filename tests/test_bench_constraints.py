"""``python -m phi3vision.bench_constraints`` runs every section and reports medians."""

from __future__ import annotations

import json

import pytest

from phi3vision.constraints import backend_available


@pytest.mark.skipif(not backend_available(), reason="the grammar extra is not installed")
def test_the_benchmark_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    from phi3vision.bench_constraints import SCHEMAS, main

    assert main(["--runs", "1", "--tokens", "3", "--threads", "1"]) == 0
    table, line = capsys.readouterr().out.rstrip("\n").rsplit("\n", 1)
    report = json.loads(line)
    assert set(report["schema_compile_ms"]) == set(SCHEMAS)
    assert set(report["mask_per_token_ms"]) == {"batch 1", "batch 8"}
    for figure in (report["import_ms"], report["tokenizer_info_ms"], *report["mask_per_token_ms"].values()):
        assert figure["min"] <= figure["median"] <= figure["max"] and figure["median"] > 0
    assert report["decode_ms_per_token"]["ratio"] > 0
    assert "| mask + advance per step, batch 8 |" in table
