"""The real checkpoints' metadata (../shared/reference, copied here) against our model build."""

from __future__ import annotations

import json

import pytest

from phi3vision.loading import build_empty_model, expected_weight_names
from phi3vision.modeling.config import build_configs

from .conftest import REFERENCE

REAL_128K = REFERENCE / "phi-3-vision-128k-instruct"


def test_full_size_model_has_exactly_the_real_weight_names_and_size():
    config = json.loads((REAL_128K / "config.json").read_text())
    index = json.loads((REAL_128K / "model.safetensors.index.json").read_text())
    model = build_empty_model(config, "sdpa")  # parameters on the meta device: no memory used
    names = expected_weight_names(model)
    assert set(names) == set(index["weight_map"])
    assert len(names) == 592
    num_parameters = sum(p.numel() for p in model.parameters())
    assert num_parameters == index["metadata"]["total_size"] // 2 == 4_146_621_440


def test_real_config_does_not_force_flash_attention():
    config = json.loads((REAL_128K / "config.json").read_text())
    assert config["_attn_implementation"] == "flash_attention_2"
    configs = build_configs(config, attn_implementation="sdpa")
    assert configs.text._attn_implementation == "sdpa"
    assert configs.vision._attn_implementation == "sdpa"


@pytest.mark.parametrize("name", ["phi-3-vision-128k-instruct", "phi-3.5-vision-instruct"])
def test_real_configs_build(name):
    config = json.loads((REFERENCE / name / "config.json").read_text())
    configs = build_configs(config)
    assert configs.vision.hidden_size == 1024 and configs.vision.num_hidden_layers == 24
    assert configs.text.rope_parameters["rope_type"] == "longrope"
    assert configs.text.rope_parameters["original_max_position_embeddings"] == 4096
    assert len(configs.text.rope_parameters["long_factor"]) == 48
    assert configs.image_embedding.hd_transform_order == "sub_glb"
