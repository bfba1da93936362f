"""``phi3vision info``: the environment and the "auto" choices, without loading a model."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from phi3vision.devices import choose_attn_implementation, choose_device, choose_dtype

from .conftest import GOLDEN_CHECKPOINT, Run


def test_info_json_matches_the_auto_choices(cli: Callable[..., Run]) -> None:
    run = cli("info", "--json")
    assert run.code == 0
    data = json.loads(run.out)
    assert data["torch"] == torch.__version__
    assert data["transformers"]
    assert data["cuda"]["available"] == torch.cuda.is_available()
    assert isinstance(data["flash_attn"]["usable"], bool)
    device, device_choice = choose_device("auto")
    dtype, dtype_choice = choose_dtype("auto", device)
    attn = choose_attn_implementation("auto", device, dtype)
    assert data["auto"]["device"]["value"] == device_choice.value
    assert data["auto"]["dtype"]["value"] == dtype_choice.value
    assert data["auto"]["attn_implementation"] == {"value": attn.value, "reason": attn.reason}


def test_info_text_names_versions_and_choices(cli: Callable[..., Run]) -> None:
    run = cli("info")
    assert run.code == 0
    assert f"torch          {torch.__version__}" in run.out
    assert "auto would choose:" in run.out
    for label in ("device", "dtype", "attention", "flash-attn", "transformers", "python"):
        assert label in run.out


def test_info_takes_no_generation_options(cli: Callable[..., Run]) -> None:
    assert cli("info", "--max-new-tokens", "3").code == 2


def test_info_with_a_model_shows_its_memory_plan(cli: Callable[..., Run]) -> None:
    from phi3vision.memory import plan_memory

    args = ["--model", str(GOLDEN_CHECKPOINT), "--device", "cpu", "--dtype", "float32"]
    run = cli("info", "--json", *args, "--quantization", "int8", "--num-crops", "4")
    assert run.code == 0
    memory = json.loads(run.out)["memory"]
    plan = plan_memory(GOLDEN_CHECKPOINT, device="cpu", dtype="float32", quantization="int8", num_crops=4)
    assert {k: memory[k] for k in plan.model_dump()} == plan.model_dump()
    assert memory["available_bytes"] > 0
    text = cli("info", *args)
    assert text.code == 0
    assert "memory plan" in text.out and "quantization none" in text.out and "KV cache" in text.out


def test_info_refuses_an_impossible_plan(cli: Callable[..., Run]) -> None:
    run = cli("info", "--model", str(GOLDEN_CHECKPOINT), "--device", "cpu", "--quantization", "nf4")
    assert run.code != 0 and "runs on cuda, not cpu" in run.err
