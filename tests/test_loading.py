"""Checkpoint loading: local directories, bad checkpoints, the Hub path (stand-in Hubs on
127.0.0.1, no network)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from phi3vision import CheckpointError, VisionModel
from phi3vision.loading import resolve_directory

from .conftest import GOLDEN_CHECKPOINT
from .hub_stand_in import COMMIT, checkpoint_hub, hanging_hub, hub_unavailable_message, run_against


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


# --- The Hub: stand-in servers on 127.0.0.1 (huggingface_hub reads HF_ENDPOINT when imported,
# so each resolution runs in a subprocess) --------------------------------------------------

_RESOLVE = """
import sys
from phi3vision.errors import CheckpointError
from phi3vision.loading import resolve_directory
try:
    print(resolve_directory(sys.argv[1]))
except CheckpointError as error:
    print(type(error).__name__, error)
    sys.exit(3)
"""


def _resolve(repo_id: str, hf_home: Path, endpoint: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``resolve_directory(repo_id)`` in a fresh process against ``endpoint``, with 1 s timeouts."""
    return run_against(endpoint, hf_home, _RESOLVE, repo_id, **env)


def test_a_hub_that_never_answers_gives_one_clear_error(tmp_path: Path):
    with hanging_hub() as endpoint:
        run = _resolve("microsoft/Phi-3-vision-128k-instruct", tmp_path / "hf", endpoint)
    message = hub_unavailable_message(run)
    assert message.startswith(f"cannot reach the Hugging Face Hub at {endpoint}")
    assert ".." not in message and "HF_HUB_ETAG_TIMEOUT" in message and "HF_HUB_OFFLINE=1 to use" in message


def test_offline_with_nothing_cached_fails_at_once(tmp_path: Path):
    with hanging_hub() as endpoint:  # contacting it would hang: offline mode must not
        run = _resolve("microsoft/Phi-3-vision-128k-instruct", tmp_path / "hf", endpoint, HF_HUB_OFFLINE="1")
    message = hub_unavailable_message(run)
    assert "HF_HUB_OFFLINE=1 forbids downloading it" in message and "unset HF_HUB_OFFLINE" in message


def test_a_hub_that_stops_answering_after_the_model_info_gives_one_clear_error(
    tmp_path: Path, golden_checkpoint: Path
):
    # A proxy that passes the API call and then hangs: every later request must time out.
    with checkpoint_hub(golden_checkpoint, "org/tiny", answers=frozenset({"info"})) as (endpoint, requests):
        run = _resolve("org/tiny", tmp_path / "hf", endpoint)
    message = hub_unavailable_message(run)
    assert message.startswith(f"cannot reach the Hugging Face Hub at {endpoint} for 'org/tiny'")
    assert "HF_HUB_OFFLINE=1 to use" in message
    assert "GET /api/models/org/tiny" in requests  # answered; what came after was not
    assert any("/org/tiny/resolve/" in request for request in requests)


def test_download_from_a_stand_in_hub_then_from_the_cache(tmp_path: Path, golden_checkpoint: Path):
    served = tmp_path / "repo"
    shutil.copytree(golden_checkpoint, served)
    (served / "modeling_phi3_v.py").write_text("raise SystemExit('remote code must never be fetched')\n")
    hf_home = tmp_path / "hf"
    with checkpoint_hub(served, "org/tiny") as (endpoint, requests):
        first = _resolve("org/tiny", hf_home, endpoint)
        assert first.returncode == 0, first.stdout + first.stderr
        directory = Path(first.stdout.strip())
        assert directory.parent.name == "snapshots" and directory.name == COMMIT
        for file in golden_checkpoint.iterdir():
            assert (directory / file.name).read_bytes() == file.read_bytes()
        assert not (directory / "modeling_phi3_v.py").exists()
        assert not any(request.endswith(".py") for request in requests)
        # The model info lists the files: no other listing is asked for.
        assert [request for request in requests if request.startswith("GET /api/models/")] == [
            "GET /api/models/org/tiny"
        ]
        # One line before the download: how much and where to.
        size = sum(file.stat().st_size for file in golden_checkpoint.iterdir()) / 1e6
        destination = hf_home / "hub" / "models--org--tiny"
        notice = f"downloading {size:.1f} MB ({len(list(golden_checkpoint.iterdir()))} files) of org/tiny"
        assert f"{notice} to {destination}" in first.stderr
        # Cached: nothing to announce, same directory.
        again = _resolve("org/tiny", hf_home, endpoint)
        assert again.returncode == 0 and Path(again.stdout.strip()) == directory
        assert "downloading" not in again.stderr
        unknown = _resolve("org/absent", hf_home, endpoint)
    assert unknown.returncode == 3
    kind, _, message = unknown.stdout.strip().partition(" ")
    assert kind == "CheckpointError" and "'org/absent'" in message and ".." not in message
    # Offline, and with a Hub that no longer answers, the cached snapshot is used.
    offline = _resolve("org/tiny", hf_home, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0 and Path(offline.stdout.strip()) == directory
    with hanging_hub() as hanging:
        unreachable = _resolve("org/tiny", hf_home, hanging)
    assert unreachable.returncode == 0 and Path(unreachable.stdout.strip()) == directory
    with _load(directory) as model:
        answer = model.generate("<|user|>\nhi<|end|>\n<|assistant|>\n", max_new_tokens=2)
        assert answer.usage.completion_tokens == 2
    # The branch moves while a missing file is downloaded: the files would not be one snapshot.
    (directory / "config.json").unlink()
    with checkpoint_hub(served, "org/tiny", files_commit="f" * 40) as (moved, _):
        mixed = _resolve("org/tiny", hf_home, moved)
    assert mixed.returncode == 3
    assert mixed.stdout.startswith(
        "CheckpointError 'org/tiny' changed on the Hugging Face Hub while downloading"
    )
