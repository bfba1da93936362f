"""Memory planning from the config alone (``phi3vision.plan_memory``) and the CPU warning."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import phi3vision
from phi3vision import memory
from phi3vision.memory import (
    MemoryWarning,
    image_tokens,
    kv_cache_bytes_per_token,
    parameter_counts,
    plan_memory,
    weight_bytes,
)

from .conftest import REFERENCE
from .hub_stand_in import checkpoint_hub, hanging_hub, hub_unavailable_message, run_against

REAL_CONFIG = json.loads((REFERENCE / "phi-3-vision-128k-instruct" / "config.json").read_text())


def _golden_config(golden_checkpoint: Path) -> dict:
    return json.loads((golden_checkpoint / "config.json").read_text())


@pytest.mark.parametrize("which", ["golden", "real"])
def test_parameter_counts_equal_the_built_model(which: str, golden_checkpoint: Path) -> None:
    from phi3vision.loading import build_empty_model

    config = REAL_CONFIG if which == "real" else _golden_config(golden_checkpoint)
    model = build_empty_model(config, "sdpa")
    counts = parameter_counts(config)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".vision_tower." in n)
    assert counts["vision"] == vision


def test_real_model_figures() -> None:
    # 4.15e9 parameters: 8.3 GB in bfloat16, as the model card says; 96-wide heads, 32 layers.
    assert weight_bytes(REAL_CONFIG, "bfloat16") == 2 * 4_146_621_440
    assert kv_cache_bytes_per_token(REAL_CONFIG, "bfloat16") == 2 * 32 * 32 * 96 * 2
    int8 = weight_bytes(REAL_CONFIG, "float32", "int8")
    assert 0.3 < int8 / weight_bytes(REAL_CONFIG, "float32") < 0.35
    assert weight_bytes(REAL_CONFIG, "bfloat16", "int4") < weight_bytes(REAL_CONFIG, "bfloat16", "int8")


@pytest.mark.parametrize("crops", [1, 4, 16])
def test_image_tokens_are_the_most_an_image_takes(crops: int) -> None:
    from phi3vision.processing.hd_transform import image_tokens_for_size

    tall = image_tokens_for_size(336, 336 * crops, crops)
    square = image_tokens_for_size(1000, 1000, crops)
    assert image_tokens(crops) == tall >= square


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_planned_weights_equal_the_loaded_tensors(golden_checkpoint: Path) -> None:
    from phi3vision import VisionModel

    config = _golden_config(golden_checkpoint)
    for quantization in (None, "int8"):
        with VisionModel.from_pretrained(
            golden_checkpoint, device="cpu", dtype="float32", quantization=quantization
        ) as vm:
            parameters = sum(p.numel() * p.element_size() for p in vm.module.parameters())
            scales = sum(
                b.numel() * b.element_size() for n, b in vm.module.named_buffers() if n.endswith("scale")
            )
        assert weight_bytes(config, "float32", quantization) == parameters + scales


def test_plan_reads_a_directory_and_defaults_from_it(golden_checkpoint: Path) -> None:
    plan = phi3vision.plan_memory(golden_checkpoint, device="cpu", num_images=2)
    config = _golden_config(golden_checkpoint)
    crops = json.loads((golden_checkpoint / "preprocessor_config.json").read_text())["num_crops"]
    assert plan.dtype == "float32" and plan.num_crops == crops and plan.quantization is None
    assert plan.prompt_tokens == 2 * image_tokens(crops) + memory.DEFAULT_TEXT_TOKENS
    assert plan.weights_bytes == weight_bytes(config, "float32")
    assert plan.kv_cache_bytes == plan.kv_cache_bytes_per_token * (plan.prompt_tokens + plan.max_new_tokens)
    assert plan.total_bytes == plan.weights_bytes + plan.kv_cache_bytes + plan.activation_peak_bytes
    assert plan_memory(config, device="cuda:0").dtype == "bfloat16"


def test_more_images_and_crops_plan_more_activations() -> None:
    one = plan_memory(REAL_CONFIG, device="cpu", num_crops=4)
    assert (
        plan_memory(REAL_CONFIG, device="cpu", num_crops=16).activation_peak_bytes > one.activation_peak_bytes
    )
    assert plan_memory(REAL_CONFIG, device="cpu", num_images=3, num_crops=4).activation_peak_bytes > (
        one.activation_peak_bytes
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"device": "cpu", "dtype": "float8"}, "unknown dtype 'float8'"),
        ({"device": "cpu", "quantization": "nf4"}, "runs on cuda, not cpu"),
        ({"device": "cpu", "num_crops": 0}, "num_crops >= 1"),
    ],
)
def test_bad_plan_options_are_options_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(phi3vision.OptionsError, match=message):
        plan_memory(REAL_CONFIG, **kwargs)


def test_a_missing_directory_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(phi3vision.CheckpointError):
        plan_memory(tmp_path / "nothing-here" / "x")


def test_from_pretrained_warns_once_when_the_plan_exceeds_available_memory(
    golden_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phi3vision import VisionModel

    monkeypatch.setattr(memory, "available_bytes", lambda device_type: 1024)
    with pytest.warns(MemoryWarning) as caught:
        VisionModel.from_pretrained(golden_checkpoint, device="cpu", dtype="float32").close()
    ours = [w for w in caught if issubclass(w.category, MemoryWarning)]
    assert len(ours) == 1 and "\n" not in str(ours[0].message)
    assert "only 0.0 GiB is available" in str(ours[0].message) and ours[0].filename == __file__

    monkeypatch.setattr(memory, "available_bytes", lambda device_type: 2**50)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoryWarning)
        VisionModel.from_pretrained(golden_checkpoint, device="cpu", dtype="float32").close()


def test_planning_does_not_import_torch(golden_checkpoint: Path) -> None:
    code = (
        "import sys, phi3vision; "
        f"plan = phi3vision.plan_memory({str(golden_checkpoint)!r}, device='cuda', quantization='int4'); "
        "assert plan.weights_bytes > 0; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_int8_on_a_cpu_plans_its_kernel_s_bfloat16_copies() -> None:
    # A long prompt, so that the prefill (not the vision stage) is the activation peak.
    plain = plan_memory(REAL_CONFIG, device="cpu", dtype="float32", num_crops=4, prompt_tokens=8000)
    int8 = plan_memory(
        REAL_CONFIG, device="cpu", dtype="float32", quantization="int8", num_crops=4, prompt_tokens=8000
    )
    hidden, intermediate = REAL_CONFIG["hidden_size"], REAL_CONFIG["intermediate_size"]
    copies = int8.prompt_tokens * (hidden + 2 * intermediate) * 2  # gate_up's input and output
    assert int8.activation_peak_bytes == plain.activation_peak_bytes + copies


def test_the_prefill_hands_lm_head_compact_rows(golden_checkpoint: Path) -> None:
    """transformers slices the last position as a strided view of the hidden states; a bfloat16
    linear on a CPU copies its whole weight first over such a view (188 MiB for Phi-3's lm_head).
    Every input lm_head gets, prefill and decode, has the strides of a fresh tensor."""
    import torch

    from phi3vision import VisionModel

    with VisionModel.from_pretrained(golden_checkpoint, device="cpu", dtype="bfloat16") as vm:
        inputs: list[torch.Tensor] = []
        lm_head = vm.module.language_model.lm_head
        hook = lm_head.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        try:
            result = vm.generate("Describe a lighthouse in a storm.", max_new_tokens=3, stop=[])
        finally:
            hook.remove()
    assert result.usage.completion_tokens == 3
    assert len(inputs) == 3 and inputs[0].shape == (1, 1, lm_head.in_features)
    assert all(x.stride() == torch.empty(x.shape).stride() for x in inputs)


# --- A Hub id: stand-in Hubs on 127.0.0.1 (huggingface_hub reads HF_ENDPOINT when imported,
# so each plan runs in a subprocess) -----------------------------------------------------------

_PLAN = """
import sys
from phi3vision import CheckpointError, plan_memory
try:
    print(plan_memory(sys.argv[1], device="cpu").model_dump_json())
except CheckpointError as error:
    print(type(error).__name__, error)
    sys.exit(3)
"""


def test_planning_a_hub_model_reads_only_its_two_config_files(
    tmp_path: Path, golden_checkpoint: Path
) -> None:
    with checkpoint_hub(golden_checkpoint, "org/tiny") as (endpoint, requests):
        run = run_against(endpoint, tmp_path / "hf", _PLAN, "org/tiny")
        absent = run_against(endpoint, tmp_path / "hf", _PLAN, "org/absent")
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout) == plan_memory(golden_checkpoint, device="cpu").model_dump(mode="json")
    read = {request.rpartition("/")[2] for request in requests if "/resolve/" in request}
    assert read == {"config.json", "preprocessor_config.json"}
    assert absent.returncode == 3, absent.stdout + absent.stderr
    kind, _, message = absent.stdout.strip().partition(" ")
    assert kind == "CheckpointError" and "'org/absent'" in message and "HF_TOKEN" in message


@pytest.mark.parametrize(
    ("offline", "says"),
    [
        ("0", ["cannot reach the Hugging Face Hub at", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_OFFLINE=1 to use"]),
        ("1", ["is not in the Hugging Face cache", "HF_HUB_OFFLINE=1 forbids", "unset HF_HUB_OFFLINE"]),
    ],
    ids=["hub-never-answers", "offline-nothing-cached"],
)
def test_planning_a_hub_model_that_cannot_be_fetched_names_the_ways_out(
    tmp_path: Path, offline: str, says: list[str]
) -> None:
    with hanging_hub() as endpoint:  # offline mode must not contact it at all
        run = run_against(
            endpoint, tmp_path / "hf", _PLAN, "microsoft/Phi-3-vision-128k-instruct", HF_HUB_OFFLINE=offline
        )
    message = hub_unavailable_message(run)
    for phrase in [*says, "'microsoft/Phi-3-vision-128k-instruct'"]:
        assert phrase in message
