"""``phi3vision info``: the environment and the "auto" choices, without loading a model."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from phi3vision.devices import choose_attn_implementation, choose_device, choose_dtype

from .conftest import Run


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
    # --model, --device, --dtype, --num-crops are its memory-plan options; these are not.
    assert cli("info", "--attn", "eager").code == 2
    assert cli("info", "--max-new-tokens", "4").code == 2
    assert cli("info", "--device", "gpu").code == 2  # an impossible value is a usage error here too
