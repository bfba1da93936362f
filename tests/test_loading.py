"""Checkpoint loading: local directories, bad checkpoints, the Hub path (without network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from phi3vision import CheckpointError, VisionModel
from phi3vision.loading import CHECKPOINT_FILE_PATTERNS, open_checkpoint, resolve_directory

from .conftest import GOLDEN_CHECKPOINT


@pytest.fixture
def checkpoint_copy(tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(GOLDEN_CHECKPOINT, target)
    for file in target.iterdir():
        file.chmod(0o644)
    return target


def _load(path: Path) -> VisionModel:
    return VisionModel.from_pretrained(path, device="cpu", dtype="float32")


def test_loads_from_a_directory_without_python_files(checkpoint_copy: Path):
    assert not list(checkpoint_copy.glob("*.py"))
    with _load(checkpoint_copy) as model:
        assert model.info.num_parameters == sum(
            t.numel() for t in load_file(str(checkpoint_copy / "model.safetensors")).values()
        )
        assert model.info.model_id == str(checkpoint_copy.resolve())
        assert model.info.directory == str(checkpoint_copy.resolve())


def test_weights_keep_their_values(checkpoint_copy: Path):
    stored = load_file(str(checkpoint_copy / "model.safetensors"))
    with _load(checkpoint_copy) as model:
        embed = model.module.language_model.get_input_embeddings().weight
        assert embed.dtype == torch.float32
        assert torch.equal(embed, stored["model.embed_tokens.weight"].float())
        sub_gn = model.module.image_embedding.sub_GN
        assert torch.equal(sub_gn, stored["model.vision_embed_tokens.sub_GN"].float())


def test_sharded_checkpoint_loads_the_same(checkpoint_copy: Path):
    tensors = load_file(str(checkpoint_copy / "model.safetensors"))
    names = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(checkpoint_copy / file), metadata={"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (checkpoint_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    (checkpoint_copy / "model.safetensors").unlink()
    with _load(checkpoint_copy) as model:
        result = model.generate("<|user|>\nhello<|end|>\n<|assistant|>\n", max_new_tokens=4, stop=[])
    with _load(GOLDEN_CHECKPOINT) as reference:
        expected = reference.generate("<|user|>\nhello<|end|>\n<|assistant|>\n", max_new_tokens=4, stop=[])
    assert result.token_ids == expected.token_ids


@pytest.mark.parametrize(
    "missing", ["config.json", "preprocessor_config.json", "tokenizer.json", "model.safetensors"]
)
def test_missing_file_is_named(checkpoint_copy: Path, missing: str):
    (checkpoint_copy / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        _load(checkpoint_copy)


def test_missing_shard_is_named(checkpoint_copy: Path):
    index = {"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (checkpoint_copy / "model.safetensors").unlink()
    (checkpoint_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors"):
        _load(checkpoint_copy)


def test_unknown_model_type(checkpoint_copy: Path):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["model_type"] = "llava"
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'llava'"):
        _load(checkpoint_copy)


def test_wrong_weight_shape_is_named(checkpoint_copy: Path):
    tensors = load_file(str(checkpoint_copy / "model.safetensors"))
    tensors["model.norm.weight"] = torch.zeros(65, dtype=torch.bfloat16)
    save_file(tensors, str(checkpoint_copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*\[65\].*\[64\]"):
        _load(checkpoint_copy)


def test_missing_weight_is_named(checkpoint_copy: Path):
    tensors = load_file(str(checkpoint_copy / "model.safetensors"))
    del tensors["model.vision_embed_tokens.glb_GN"]
    save_file(tensors, str(checkpoint_copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing.*model\.vision_embed_tokens\.glb_GN"):
        _load(checkpoint_copy)


def test_unexpected_weight_is_named(checkpoint_copy: Path):
    tensors = load_file(str(checkpoint_copy / "model.safetensors"))
    tensors["model.extra_head.weight"] = torch.zeros(2)
    save_file(tensors, str(checkpoint_copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected weight 'model\.extra_head\.weight'"):
        _load(checkpoint_copy)


def test_corrupt_weights_file(checkpoint_copy: Path):
    (checkpoint_copy / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        _load(checkpoint_copy)


def test_config_without_vision_config_means_clip_vit_l(checkpoint_copy: Path):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    del config["vision_config"]
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    # Without vision_config the tower is ViT-L/14-336 (width 1024), which the tiny config contradicts...
    with pytest.raises(CheckpointError, match=r"image_dim_out \(64\).*hidden_size \(1024\)"):
        _load(checkpoint_copy)
    # ... and with a consistent config, the tiny weights are the wrong shape for it.
    config["img_processor"]["image_dim_out"] = 1024
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"has shape \[1, 1, 256\].*needs \[1, 1, 4096\]"):
        _load(checkpoint_copy)


def test_not_a_directory_nor_a_hub_id(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        resolve_directory(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        resolve_directory("not a valid id!")
    file = tmp_path / "config.json"
    file.write_text("{}")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_directory(file)


def test_hub_ids_go_through_huggingface_hub(monkeypatch: pytest.MonkeyPatch, checkpoint_copy: Path):
    calls = []

    def fake_snapshot_download(
        repo_id: str, revision: str | None = None, allow_patterns: list[str] | None = None
    ):
        calls.append((repo_id, revision, allow_patterns))
        return str(checkpoint_copy)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    checkpoint = open_checkpoint("microsoft/Phi-3-vision-128k-instruct", revision="abc123")
    assert calls == [("microsoft/Phi-3-vision-128k-instruct", "abc123", CHECKPOINT_FILE_PATTERNS)]
    assert checkpoint.model_id == "microsoft/Phi-3-vision-128k-instruct"
    assert checkpoint.revision == "abc123"
    # Only data files are ever fetched: never the repository's Python code or pickles.
    assert not any(p.endswith((".py", ".bin", ".pt")) for p in CHECKPOINT_FILE_PATTERNS)


def test_hub_failure_becomes_checkpoint_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointError, match=r"microsoft/Phi-3-vision-128k-instruct.*Hugging Face Hub"):
        resolve_directory("microsoft/Phi-3-vision-128k-instruct")


@pytest.mark.parametrize("shard", ["../elsewhere.safetensors", "sub/model.safetensors", "weights.bin"])
def test_index_cannot_point_outside_the_checkpoint(checkpoint_copy: Path, shard: str):
    (checkpoint_copy / "model.safetensors").unlink()
    index = {"weight_map": {"lm_head.weight": shard}}
    (checkpoint_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"shards must be \.safetensors files in the checkpoint"):
        _load(checkpoint_copy)


def test_truncated_weights_file(checkpoint_copy: Path):
    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"cannot read weights.*outside the file"):
        _load(checkpoint_copy)


def test_header_inconsistent_with_the_data(checkpoint_copy: Path):
    weights = checkpoint_copy / "model.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["model.norm.weight"]["dtype"] = "F32"  # claims twice the bytes it has
    text = json.dumps(header).encode()
    weights.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*do not fit shape"):
        _load(checkpoint_copy)


def test_weights_are_read_without_memory_mapping(checkpoint_copy: Path, monkeypatch: pytest.MonkeyPatch):
    """Mapped file pages would count as the process's memory while loading: plain reads only."""
    import mmap

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loader memory-mapped a file")

    monkeypatch.setattr(mmap, "mmap", refuse)
    import safetensors

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    with _load(checkpoint_copy) as model:
        assert (
            model.generate("<|user|>\nhi<|end|>\n<|assistant|>\n", max_new_tokens=2).usage.completion_tokens
            == 2
        )
