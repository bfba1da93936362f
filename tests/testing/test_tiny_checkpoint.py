"""tiny_checkpoint(): the real layout, real weight names, deterministic weights, sharding, sizes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from safetensors import safe_open

from phi3vision import ModelClosedError, OptionsError, VisionModel
from phi3vision.loading import build_empty_model, expected_weight_names
from phi3vision.testing import TINY_SIZES, FakeVisionModel, tiny_checkpoint

from ..conftest import GOLDEN_CHECKPOINT, REFERENCE
from .conftest import make_photo

PROMPT = "<|user|>\n<|image_1|>\nWhat is in this picture?<|end|>\n<|assistant|>\n"
REAL_INDEX = REFERENCE / "phi-3-vision-128k-instruct" / "model.safetensors.index.json"


def greedy_tokens(model: VisionModel) -> list[int]:
    model.clear_caches()  # each comparison starts from nothing
    return model.generate(PROMPT, [make_photo()], num_crops=1, max_new_tokens=12, stop=[]).token_ids


@pytest.fixture(scope="module")
def seed0_tokens(tiny_vision_model: VisionModel) -> list[int]:
    """Greedy tokens of the session's seed-0 model, the reference for the comparisons."""
    return greedy_tokens(tiny_vision_model)


def stored_names_and_dtypes(directory: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                found[name] = handle.get_slice(name).get_dtype()
    return found


def test_the_layout_is_the_real_repositorys(tiny_vision_checkpoint: Path) -> None:
    directory = tiny_vision_checkpoint
    assert {p.name for p in directory.iterdir()} == {
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model.safetensors",
    }
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "phi3_v"
    assert config["embd_layer"]["use_hd_transform"] and config["embd_layer"]["with_learnable_separator"]
    assert config["img_processor"]["image_dim_out"] == config["vision_config"]["hidden_size"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rope = config["rope_scaling"]
    assert rope["type"] == "su"
    assert len(rope["long_factor"]) == len(rope["short_factor"]) == head_dim // 2
    assert rope["long_factor"] == sorted(rope["long_factor"])  # rising, like the real factors
    assert config["vocab_size"] == 32064
    preprocessor = json.loads((directory / "preprocessor_config.json").read_text())
    assert preprocessor["num_crops"] == TINY_SIZES["num_crops"]
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (directory / name).read_bytes() == (GOLDEN_CHECKPOINT / name).read_bytes()


def test_the_weights_have_exactly_the_real_names(tiny_vision_checkpoint: Path) -> None:
    config = json.loads((tiny_vision_checkpoint / "config.json").read_text())
    stored = stored_names_and_dtypes(tiny_vision_checkpoint)
    assert set(stored) == set(expected_weight_names(build_empty_model(config, "sdpa")))
    # Every tiny name is a name of the real 4.2B-parameter checkpoint (only fewer layers).
    real_names = set(json.loads(REAL_INDEX.read_text())["weight_map"])
    assert set(stored) <= real_names
    assert set(stored.values()) == {"BF16"}  # stored like the real checkpoints


def test_layer_norms_start_near_one(tiny_vision_checkpoint: Path) -> None:
    """Norm weights ~1 and biases 0 keep the random model's activations in range."""
    with safe_open(str(tiny_vision_checkpoint / "model.safetensors"), framework="pt") as handle:
        norm = handle.get_tensor("model.layers.0.input_layernorm.weight").float()
        vision = "model.vision_embed_tokens.img_processor.vision_model."
        bias = handle.get_tensor(vision + "pre_layrnorm.bias").float()
        linear = handle.get_tensor("model.layers.0.self_attn.qkv_proj.weight").float()
    assert (norm - 1).abs().max().item() < 0.2
    assert bias.abs().max().item() == 0.0
    assert 0.01 < linear.std().item() < 0.03


def test_it_loads_fast_and_generates(tiny_vision_checkpoint: Path) -> None:
    with VisionModel.from_pretrained(tiny_vision_checkpoint, device="cpu", dtype="float32") as model:
        photo = make_photo()
        result = model.generate(PROMPT, [photo], num_crops=2, max_new_tokens=5, stop=[])
        assert (result.finish_reason, result.usage.completion_tokens) == ("length", 5)
        assert result.usage.prompt_tokens == model.count_tokens(PROMPT, [photo], num_crops=2).total
        assert model.info.num_parameters > 1_000_000  # the real vocabulary, twice
    # Closed, it behaves like a closed fake.
    fake = FakeVisionModel()
    fake.close()
    for closed in (model, fake):
        with pytest.raises(ModelClosedError):
            closed.generate(PROMPT, [photo])
        with pytest.raises(ModelClosedError):
            closed.generate_batch([(PROMPT, [photo])])
        with pytest.raises(ModelClosedError):
            closed.count_tokens(PROMPT, [photo])


def test_the_same_seed_gives_the_same_model(
    tiny_vision_checkpoint: Path, seed0_tokens: list[int], tmp_path: Path
) -> None:
    again = tiny_checkpoint(tmp_path / "again", seed=0)
    weights = (again / "model.safetensors").read_bytes()
    assert weights == (tiny_vision_checkpoint / "model.safetensors").read_bytes()
    with VisionModel.from_pretrained(again, device="cpu", dtype="float32") as model:
        assert greedy_tokens(model) == seed0_tokens


def test_another_seed_gives_another_model(seed0_tokens: list[int], tmp_path: Path) -> None:
    other = tiny_checkpoint(tmp_path / "other", seed=1)
    with VisionModel.from_pretrained(other, device="cpu", dtype="float32") as model:
        assert greedy_tokens(model) != seed0_tokens


def test_a_sharded_checkpoint_loads_the_same_model(
    tiny_vision_model: VisionModel, seed0_tokens: list[int], tmp_path: Path
) -> None:
    sharded = tiny_checkpoint(tmp_path / "sharded", seed=0, shards=3)
    shard_files = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert shard_files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not (sharded / "model.safetensors").exists()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    stored = stored_names_and_dtypes(sharded)
    assert set(index["weight_map"]) == set(stored)
    assert set(index["weight_map"].values()) == set(shard_files)  # no shard is empty
    assert index["metadata"]["total_size"] == 2 * tiny_vision_model.info.num_parameters  # bfloat16
    with VisionModel.from_pretrained(sharded, device="cpu", dtype="float32") as model:
        assert greedy_tokens(model) == seed0_tokens


def test_sizes_can_be_changed(tmp_path: Path) -> None:
    directory = tiny_checkpoint(
        tmp_path / "small",
        seed=3,
        dtype="float32",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        intermediate_size=48,
        vision_hidden_size=32,
        vision_heads=2,
        vision_layers=1,
        vision_intermediate_size=40,
        num_crops=4,
        max_position_embeddings=8192,
    )
    config = json.loads((directory / "config.json").read_text())
    assert (config["hidden_size"], config["num_key_value_heads"]) == (32, 2)
    assert config["max_position_embeddings"] == 8192
    assert len(config["rope_scaling"]["short_factor"]) == 32 // 4 // 2
    assert config["vision_config"]["num_hidden_layers"] == 1
    assert set(stored_names_and_dtypes(directory).values()) == {"F32"}
    with VisionModel.from_pretrained(directory, device="cpu", dtype="float32") as model:
        assert (model.info.num_crops, model.context_length) == (4, 8192)
        result = model.generate(PROMPT, [make_photo()], max_new_tokens=3, stop=[])
        assert result.usage.completion_tokens == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"hidden_layers": 2}, "unknown tiny_checkpoint size"),
        ({"hidden_size": 0}, "positive int"),
        ({"vision_layers": True}, "positive int"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "multiple of num_attention_heads"),
        ({"hidden_size": 12, "num_attention_heads": 4}, "must be even"),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_attention_heads": 2, "num_key_value_heads": 4}, "num_key_value_heads"),
        ({"vision_hidden_size": 30, "vision_heads": 4}, "vision_heads"),
        ({"num_crops": 65}, "num_crops"),
        ({"original_max_position_embeddings": 8192, "max_position_embeddings": 4096}, "must not exceed"),
        ({"shards": 0}, "shards"),
        ({"shards": 10_000}, "at most the number of weights"),
        ({"seed": -1}, "seed"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_bad_arguments_raise_options_error(
    arguments: dict[str, object], message: str, tmp_path: Path
) -> None:
    target = tmp_path / "never"
    with pytest.raises(OptionsError, match=message):
        tiny_checkpoint(target, **arguments)  # type: ignore[arg-type]
    assert not target.exists()


def test_a_directory_with_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"old weights")
    with pytest.raises(OptionsError, match="new or empty directory"):
        tiny_checkpoint(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == b"old weights"


def test_no_path_means_one_shared_directory_per_arguments() -> None:
    """Calls without a path do not each leave a new copy in the temporary folder."""
    temporary = Path(tempfile.gettempdir())
    first = tiny_checkpoint(num_hidden_layers=1, seed=7)
    try:
        before = set(temporary.iterdir())
        again = tiny_checkpoint(num_hidden_layers=1, seed=7)
        assert again == first and set(temporary.iterdir()) == before
        assert (first / "model.safetensors").is_file() and (first / "config.json").is_file()
        assert not list(temporary.glob(f"{first.name}.partial-*"))
        other = tiny_checkpoint(num_hidden_layers=1, seed=8)
        try:
            assert other != first and other.parent == first.parent
        finally:
            shutil.rmtree(other)
    finally:
        shutil.rmtree(first)


def test_the_session_fixture_removes_its_checkpoint(tmp_path: Path) -> None:
    record = tmp_path / "where.txt"
    (tmp_path / "test_inner.py").write_text(
        "def test_record(tiny_vision_checkpoint):\n"
        "    assert (tiny_vision_checkpoint / 'model.safetensors').is_file()\n"
        f"    open({str(record)!r}, 'w').write(str(tiny_vision_checkpoint))\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = Path(record.read_text())
    assert written.name == "checkpoint" and not written.parent.exists()


def test_key_value_heads_follow_the_attention_heads(tmp_path: Path) -> None:
    directory = tiny_checkpoint(tmp_path / "heads", num_attention_heads=2, num_hidden_layers=1)
    config = json.loads((directory / "config.json").read_text())
    assert config["num_attention_heads"] == config["num_key_value_heads"] == 2
