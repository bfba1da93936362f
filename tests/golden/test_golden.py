"""Parity with the reference implementation (../shared/golden, copied here): the specification.

Every case goes through the public surface: ``VisionModel.from_pretrained``, ``encode``,
``logits`` and ``generate``, with eager and sdpa attention. Tolerances are the README's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from phi3vision import VisionModel

GOLDEN = Path(__file__).parent / "phi3v-tiny"
CASES = json.loads((GOLDEN / "cases.json").read_text())
TENSORS = load_file(str(GOLDEN / "tensors.safetensors"))
IMAGE_CASES = CASES["image_processor"]
MODEL_CASES = {case["name"]: case for case in CASES["model"]}


# Every way of running the model must give the reference's results: both attention
# implementations, the caches of earlier work off, and the static-cache compiled decoder.
VARIANTS = {
    "eager": {"attn_implementation": "eager"},
    "sdpa": {"attn_implementation": "sdpa"},
    "sdpa-no-reuse": {"attn_implementation": "sdpa", "feature_cache_size": 0, "reuse_prefix": False},
    "sdpa-compiled": {"attn_implementation": "sdpa", "compile": True},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def golden_model(request):
    model = VisionModel.from_pretrained(
        GOLDEN / "checkpoint", device="cpu", dtype="float32", **VARIANTS[request.param]
    )
    assert model.attn_implementation == VARIANTS[request.param]["attn_implementation"]
    yield model
    model.close()


def _image_case_id(case: dict) -> str:
    return f"{Path(case['image']).stem}-crops{case['num_crops']}"


@pytest.mark.parametrize("case", IMAGE_CASES, ids=_image_case_id)
def test_image_processor_matches_reference(cpu_model, case):
    encoding = cpu_model.encode("<|image_1|>", [GOLDEN / case["image"]], num_crops=case["num_crops"])
    expected = case["pixel_values"]
    pixel_values = encoding.pixel_values[0]
    assert list(pixel_values.shape) == expected["shape"]
    assert encoding.image_sizes[0].tolist() == case["image_size"]
    assert encoding.image_token_counts == [case["num_img_tokens"]]
    assert (encoding.input_ids[0] == -1).sum().item() == case["num_img_tokens"]

    flat = pixel_values.flatten().double()
    sampled = flat[torch.tensor(expected["sample_index"])]
    assert torch.allclose(
        sampled, torch.tensor(expected["sample_value"], dtype=torch.float64), rtol=0, atol=1e-4
    )
    assert flat.sum().item() == pytest.approx(expected["sum"], rel=1e-3)
    assert (flat**2).sum().item() == pytest.approx(expected["sumsq"], rel=1e-3)
    if "pixel_values_tensor" in case:
        full = TENSORS[case["pixel_values_tensor"]]
        assert (pixel_values - full).abs().max().item() <= 1e-4


def _inputs(case: dict) -> tuple[str, list[Path]]:
    return case["prompt"], [GOLDEN / image for image in case["images"]]


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_token_ids_match_reference(cpu_model, name):
    case = MODEL_CASES[name]
    prompt, images = _inputs(case)
    encoding = cpu_model.encode(prompt, images, num_crops=case["num_crops"])
    expected = TENSORS[case["input_ids_tensor"]]
    assert encoding.input_ids.shape == (1, case["seq_len"])
    assert torch.equal(encoding.input_ids[0], expected)
    assert encoding.num_image_tokens == case["num_image_tokens"]
    assert [int(p) for p in (encoding.input_ids[0] == 1).nonzero().flatten()] == case["bos_positions"]
    assert encoding.pixel_values.shape[:2] == (len(images), case["num_crops"] + 1)
    assert encoding.image_sizes.shape == (len(images), 2)


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_logits_match_reference(golden_model, name):
    case = MODEL_CASES[name]
    prompt, images = _inputs(case)
    encoding = golden_model.encode(prompt, images, num_crops=case["num_crops"])
    logits = golden_model.logits(encoding)
    assert logits.shape == (1, case["seq_len"], 32064)
    expected = TENSORS[case["logits_tensor"]]
    difference = (logits[0, case["logits_positions"]] - expected).abs().max().item()
    assert difference <= 1e-3, f"max |logit difference| {difference}"


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_greedy_tokens_match_reference(golden_model, name):
    case = MODEL_CASES[name]
    prompt, images = _inputs(case)
    result = golden_model.generate(prompt, images, num_crops=case["num_crops"], max_new_tokens=24, stop=[])
    assert result.token_ids == case["greedy_new_tokens"]
    assert result.finish_reason == "length"
    assert result.usage.prompt_tokens == case["seq_len"]
    assert result.usage.image_tokens == case["num_image_tokens"]
    assert result.usage.completion_tokens == 24
