"""``tiny_checkpoint()``: a random-weight Phi-3-vision checkpoint in the real repository layout.

The files are those of ``microsoft/Phi-3-vision-128k-instruct`` (config.json with model_type
phi3_v, "su" rotary scaling, embd_layer and img_processor; preprocessor_config.json; the real
tokenizer files; safetensors with exactly the real weight names), only the sizes are tiny and
the config states its small CLIP tower in a top-level ``vision_config``. Loading it runs every
line of the real engine (loading, HD transform, CLIP, the image glue, Phi-3, decoding) in about
a second on a CPU, so a downstream test can check its wiring end to end. The answers are noise.

Writing one imports torch (lazily, inside the function).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import OptionsError
from ..processing.processor import MAX_NUM_CROPS

if TYPE_CHECKING:
    import torch

TINY_SIZES: dict[str, int] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "vision_hidden_size": 64,
    "vision_layers": 2,
    "vision_heads": 4,
    "vision_intermediate_size": 128,
    "num_crops": 16,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
}
"""The default sizes; ``tiny_checkpoint(**sizes)`` overrides any of them
(``num_key_value_heads`` follows ``num_attention_heads`` unless given). The positions and
num_crops are the real checkpoints' values, so prompts fit exactly as they would there."""

VOCAB_SIZE = 32064
"""The real vocabulary size (the tokenizer's 32045 entries, padded): the tokenizer is real."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

WEIGHT_STD = 0.02
"""Standard deviation of the random weights (the config's ``initializer_range``)."""


def tiny_checkpoint(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    shards: int = 1,
    dtype: Literal["bfloat16", "float32"] = "bfloat16",
    **sizes: int,
) -> Path:
    """Write a tiny random-weight checkpoint and return its directory.

    ``path`` must be a new or empty directory. With ``None``, the checkpoint is written once
    into a directory under the system's temporary folder shared by every call with the same
    arguments (and the same phi3vision code), and later calls return it at once: treat it as
    read-only, and pass a ``path`` for a copy of your own. The same ``seed`` and sizes give
    byte-identical weights, so a model
    loaded from them gives the same greedy tokens every time. ``shards > 1`` writes
    ``model-0000N-of-0000M.safetensors`` files and ``model.safetensors.index.json`` like the
    real repository. ``dtype`` is the storage type (the real checkpoints store bfloat16).
    Unknown size names and impossible combinations raise ``OptionsError``.
    """
    chosen = _check_sizes(sizes)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise OptionsError(f"seed must be an int from 0 to 2**63 - 1, got {seed!r}")
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise OptionsError(f"shards must be a positive int, got {shards!r}")
    if dtype not in ("bfloat16", "float32"):
        raise OptionsError(f"dtype must be 'bfloat16' or 'float32', got {dtype!r}")
    _check_directory(path)
    if path is None:
        return _shared_checkpoint(chosen, seed, shards, dtype)
    return _write_checkpoint(Path(path).expanduser(), chosen, seed, shards, dtype)


def _shared_checkpoint(
    sizes: dict[str, int], seed: int, shards: int, dtype: Literal["bfloat16", "float32"]
) -> Path:
    """The shared directory for these arguments, written on first use. It is written beside
    and renamed into place, so a directory that exists is complete, even with several
    processes at once; the key covers this module's code, so a change of layout gets a new one."""
    arguments = json.dumps({"sizes": sizes, "seed": seed, "shards": shards, "dtype": dtype}, sort_keys=True)
    key = hashlib.sha256(arguments.encode() + Path(__file__).read_bytes()).hexdigest()[:16]
    directory = Path(tempfile.gettempdir()) / f"phi3vision-tiny-{key}"
    if directory.is_dir():
        return directory
    staging = Path(tempfile.mkdtemp(prefix=f"{directory.name}.partial-", dir=directory.parent))
    try:
        _write_checkpoint(staging, sizes, seed, shards, dtype)
        staging.rename(directory)
    except OSError:
        if not directory.is_dir():  # not merely another process finishing first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _write_checkpoint(
    directory: Path, chosen: dict[str, int], seed: int, shards: int, dtype: Literal["bfloat16", "float32"]
) -> Path:
    config = tiny_config(chosen, seed, dtype)
    tensors = random_weights(config, seed, dtype)
    if shards > len(tensors):
        raise OptionsError(f"shards must be at most the number of weights ({len(tensors)}), got {shards}")
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(directory / "config.json", config)
    _write_json(directory / "preprocessor_config.json", tiny_preprocessor_config(chosen["num_crops"]))
    data = resources.files("phi3vision.testing").joinpath("data")
    for name in TOKENIZER_FILES:
        (directory / name).write_bytes(data.joinpath(name).read_bytes())
    _write_weights(directory, tensors, shards)
    return directory


def _check_sizes(sizes: dict[str, Any]) -> dict[str, int]:
    unknown = sorted(set(sizes) - set(TINY_SIZES))
    if unknown:
        raise OptionsError(
            f"unknown tiny_checkpoint size(s) {', '.join(unknown)}; known: {', '.join(TINY_SIZES)}"
        )
    chosen = {**TINY_SIZES, **sizes}
    if "num_key_value_heads" not in sizes:  # as in the real configs: one key/value head per head
        chosen["num_key_value_heads"] = chosen["num_attention_heads"]
    for name, value in chosen.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionsError(f"{name} must be a positive int, got {value!r}")
    problems = []
    if chosen["hidden_size"] % chosen["num_attention_heads"]:
        problems.append("hidden_size must be a multiple of num_attention_heads")
    elif (chosen["hidden_size"] // chosen["num_attention_heads"]) % 2:
        problems.append("the head size (hidden_size / num_attention_heads) must be even (rotary embeddings)")
    if chosen["num_attention_heads"] % chosen["num_key_value_heads"]:
        problems.append("num_attention_heads must be a multiple of num_key_value_heads")
    if chosen["vision_hidden_size"] % chosen["vision_heads"]:
        problems.append("vision_hidden_size must be a multiple of vision_heads")
    if chosen["num_crops"] > MAX_NUM_CROPS:
        problems.append(f"num_crops must be at most {MAX_NUM_CROPS}")
    if chosen["original_max_position_embeddings"] > chosen["max_position_embeddings"]:
        problems.append("original_max_position_embeddings must not exceed max_position_embeddings")
    if problems:
        raise OptionsError(f"invalid tiny_checkpoint sizes: {'; '.join(problems)}")
    return chosen


def tiny_config(sizes: dict[str, int], seed: int = 0, dtype: str = "bfloat16") -> dict[str, Any]:
    """``config.json`` of a tiny checkpoint: the real fields, small sizes, its own ``vision_config``."""
    half_head = sizes["hidden_size"] // sizes["num_attention_heads"] // 2
    steps = [i / max(1, half_head - 1) for i in range(half_head)]
    return {
        "_name_or_path": f"phi3vision-tiny-seed{seed}",
        "architectures": ["Phi3VForCausalLM"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_phi3_v.Phi3VConfig",
            "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
        },
        "bos_token_id": 1,
        "embd_layer": {
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": sizes["hidden_size"],
        "img_processor": {
            "image_dim_out": sizes["vision_hidden_size"],
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
        },
        "initializer_range": WEIGHT_STD,
        "intermediate_size": sizes["intermediate_size"],
        "max_position_embeddings": sizes["max_position_embeddings"],
        "model_type": "phi3_v",
        "num_attention_heads": sizes["num_attention_heads"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_key_value_heads": sizes["num_key_value_heads"],
        "original_max_position_embeddings": sizes["original_max_position_embeddings"],
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            # Shaped like the real factors: short ones near 1 to 2.5, long ones rising to 64.
            "long_factor": [round(1.0 + 63.0 * step**2, 4) for step in steps],
            "short_factor": [round(1.0 + 1.5 * step, 4) for step in steps],
            "type": "su",
        },
        "rope_theta": 10000.0,
        "sliding_window": sizes["max_position_embeddings"],
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "transformers_version": "4.38.1",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
        "vision_config": {
            "hidden_size": sizes["vision_hidden_size"],
            "intermediate_size": sizes["vision_intermediate_size"],
            "num_attention_heads": sizes["vision_heads"],
            "num_hidden_layers": sizes["vision_layers"],
            "image_size": 336,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-05,
            "num_channels": 3,
            "projection_dim": sizes["vision_hidden_size"],
        },
    }


def tiny_preprocessor_config(num_crops: int) -> dict[str, Any]:
    """``preprocessor_config.json``: the real one with the chosen ``num_crops``."""
    return {
        "auto_map": {
            "AutoProcessor": "processing_phi3_v.Phi3VProcessor",
            "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor",
        },
        "num_crops": num_crops,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "Phi3VImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "Phi3VProcessor",
        "num_img_tokens": 144,
    }


def random_weights(config: dict[str, Any], seed: int, dtype: str = "bfloat16") -> dict[str, torch.Tensor]:
    """Every weight the model built from ``config`` needs, under its checkpoint name.

    The names and shapes come from the real model build (``build_empty_model`` on the meta
    device, ``expected_weight_names``), so the checkpoint cannot disagree with the loader.
    Values: normal with std 0.02, drawn in sorted name order from one seeded generator; layer
    norm weights near 1 and their biases 0, as after training, so activations stay in range.
    """
    import torch

    from ..loading import build_empty_model, expected_weight_names

    model = build_empty_model(config, "eager")
    names = expected_weight_names(model)
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    storage = getattr(torch, dtype)
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(names):
        ours = names[name]
        values = torch.randn(params[ours].shape, generator=generator) * WEIGHT_STD
        owner = model.get_submodule(ours.rpartition(".")[0])
        if "Norm" in type(owner).__name__:
            values = values + 1.0 if ours.endswith(".weight") else torch.zeros_like(values)
        tensors[name] = values.to(storage).contiguous()
    return tensors


def _check_directory(path: str | Path | None) -> None:
    """Refuse a directory with files in it before any work: old weights there could be loaded
    instead of the new ones (a stale ``model.safetensors`` wins over new shards)."""
    if path is None:
        return
    directory = Path(path).expanduser()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise OptionsError(f"tiny_checkpoint writes into a new or empty directory; {directory} is not one")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _write_weights(directory: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    """``model.safetensors``, or ``shards`` files holding consecutive runs of the sorted names
    plus the index that maps each name to its file (the Hub's sharded layout)."""
    from safetensors.torch import save_file

    metadata = {"format": "pt"}
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata=metadata)
        return
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = names[shard * len(names) // shards : (shard + 1) * len(names) // shards]
        save_file({name: tensors[name] for name in part}, str(directory / file), metadata=metadata)
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(
        directory / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )


__all__ = ["TINY_SIZES", "random_weights", "tiny_checkpoint", "tiny_config", "tiny_preprocessor_config"]
