"""A checkpoint's ``config.json`` (``model_type`` phi3_v) -> the configs of the modules we build.

Pure functions over dicts: no file access here (``loading`` reads the file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig, Phi3Config

MODEL_TYPE = "phi3_v"

CLIP_VIT_L14_336: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "num_channels": 3,
    "projection_dim": 768,
}
"""CLIP ViT-L/14-336, the vision tower the real checkpoints imply (``img_processor.model_name``)."""

# Fields of the Phi-3-vision config that mean nothing to transformers' Phi3Config, or that
# must not leak into it (the real 128k config asks for flash_attention_2, which we decide).
_NOT_FOR_PHI3 = {
    "_attn_implementation",
    "_name_or_path",
    "architectures",
    "auto_map",
    "embd_layer",
    "img_processor",
    "model_type",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "vision_config",
}


# Sizes a real checkpoint could have, with room to spare; anything beyond is a damaged file
# (and a billion layers would take forever to build, even without memory).
_TEXT_SIZES = {
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 20,
    "num_attention_heads": 1 << 10,
    "num_hidden_layers": 1 << 10,
    "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 24,
}
_VISION_SIZES = {
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 20,
    "num_attention_heads": 1 << 10,
    "num_hidden_layers": 1 << 10,
    "num_channels": 3,
    "projection_dim": 1 << 16,
}


def _fail(field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"config.json: {field} {problem}")


def _dict(raw: dict[str, Any], field: str) -> dict[str, Any]:
    """A nested section (absent or null means empty)."""
    value = raw.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(field, f"must be a JSON object, got {type(value).__name__}")
    return value


def _size(
    section: dict[str, Any], field: str, most: int, default: int | None = None, where: str = ""
) -> int:
    """An int from 1 to ``most``: bool, float and string spellings are damage, not sizes."""
    value = section.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise _fail(f"{where}{field}", f"must be an integer from 1 to {most}, got {value!r:.60}")
    return value


def _number(section: dict[str, Any], field: str, where: str = "", positive: bool = True) -> None:
    """A finite number (above 0 with ``positive``), when present."""
    if field not in section or section[field] is None:
        return
    value = section[field]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0) or (not positive and value < 0):
        bound = "above 0" if positive else "at least 0"
        raise _fail(f"{where}{field}", f"must be a finite number {bound}, got {value!r:.60}")


def _is_positive_number(value: object) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0  # type: ignore[arg-type,operator]


def _token_id(raw: dict[str, Any], field: str, vocab_size: int) -> None:
    value = raw.get(field)
    values = value if isinstance(value, list) else [value]
    for item in values:
        if item is None and not isinstance(value, list):
            continue
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < vocab_size:
            raise _fail(field, f"must be a token id from 0 to {vocab_size - 1}, got {value!r:.60}")


def check_text_fields(raw: dict[str, Any]) -> int:
    """Check the language model's sizes and their relations, naming the field that is wrong;
    returns the attention head size."""
    sizes = {field: _size(raw, field, most) for field, most in _TEXT_SIZES.items()}
    heads = sizes["num_attention_heads"]
    kv_heads = _size(raw, "num_key_value_heads", heads, default=heads)
    if sizes["hidden_size"] % heads or (sizes["hidden_size"] // heads) % 2:
        raise _fail(
            "hidden_size",
            f"({sizes['hidden_size']}) must be an even multiple of num_attention_heads ({heads})",
        )
    if heads % kv_heads:
        raise _fail("num_key_value_heads", f"({kv_heads}) must divide num_attention_heads ({heads})")
    for field in ("rms_norm_eps", "rope_theta"):
        _number(raw, field)
    for field in ("initializer_range", "attention_dropout", "embd_pdrop", "resid_pdrop"):
        _number(raw, field, positive=False)
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        _token_id(raw, field, sizes["vocab_size"])
    window = raw.get("sliding_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise _fail("sliding_window", f"must be null or an integer >= 1, got {window!r:.60}")
    return sizes["hidden_size"] // heads


def _rope_factors(scaling: dict[str, Any], field: str, length: int) -> list[float]:
    factors = scaling.get(field)
    if not isinstance(factors, list) or not all(_is_positive_number(f) for f in factors):
        raise _fail(f"rope_scaling.{field}", "must be a list of finite numbers above 0")
    if len(factors) != length:
        raise _fail(
            f"rope_scaling.{field}",
            f"has {len(factors)} factors, but the attention heads (hidden_size / num_attention_heads) "
            f"need {length}",
        )
    return [float(f) for f in factors]


@dataclass(frozen=True)
class ImageEmbeddingConfig:
    """What the Phi-3-vision glue between CLIP and Phi-3 needs to know."""

    image_dim_out: int
    """Width of one CLIP patch feature (1024 for ViT-L)."""
    hidden_size: int
    """Width of the language model's token embeddings."""
    layer_idx: int = -2
    """Which CLIP hidden state to use: the second-to-last layer's."""
    hd_transform_order: str = "sub_glb"
    """Crops first, then the global view ("sub_glb"), or the other way round ("glb_sub")."""


@dataclass(frozen=True)
class Phi3VConfigs:
    text: Phi3Config
    vision: CLIPVisionConfig
    image_embedding: ImageEmbeddingConfig
    bos_token_id: int
    max_position_embeddings: int


def rope_parameters(raw: dict[str, Any], head_dim: int | None = None) -> dict[str, Any]:
    """transformers 5's ``rope_parameters`` for the checkpoint's rotary settings.

    The checkpoints say ``rope_scaling: {type: "su", short_factor, long_factor}`` (the name
    LongRoPE had when they were released) next to a top-level
    ``original_max_position_embeddings``. "su" is "longrope": short factors while the
    sequence fits the original 4096 positions, long factors beyond, and cos/sin scaled by
    ``sqrt(1 + ln(max / original) / ln(original))``. With ``head_dim``, each factor list must
    have one factor per pair of head dimensions.
    """
    _number(raw, "rope_theta")
    theta = float(raw.get("rope_theta") or 10000.0)
    scaling = _dict(raw, "rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind not in ("su", "longrope"):
        raise CheckpointError(f"config.json: unsupported rope_scaling type {kind!r:.60} (expected 'su')")
    for field in ("short_factor", "long_factor", "original_max_position_embeddings"):
        if field not in (scaling if field.endswith("factor") else raw):
            raise CheckpointError(f"config.json: rope_scaling needs {field!r}")
    maximum = _size(raw, "max_position_embeddings", _TEXT_SIZES["max_position_embeddings"], default=4096)
    original = _size(raw, "original_max_position_embeddings", maximum)
    if original < 2:
        raise _fail("original_max_position_embeddings", f"must be at least 2, got {original}")
    length = head_dim // 2 if head_dim is not None else None
    short = _rope_factors(scaling, "short_factor", length or len(scaling.get("short_factor") or []))
    long = _rope_factors(scaling, "long_factor", length or len(short))
    return {
        "rope_type": "longrope",
        "rope_theta": theta,
        "short_factor": short,
        "long_factor": long,
        "original_max_position_embeddings": original,
        "factor": maximum / original,
    }


def build_configs(raw: dict[str, Any], attn_implementation: str = "sdpa") -> Phi3VConfigs:
    """Turn a checkpoint config dict into our module configs, checking what we depend on."""
    from transformers import CLIPVisionConfig, Phi3Config

    if not isinstance(raw, dict):
        raise CheckpointError(f"config.json must hold a JSON object, got {type(raw).__name__}")
    if raw.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"config.json has model_type {raw.get('model_type')!r:.60}; phi3vision loads "
            f"Phi-3-vision checkpoints (model_type {MODEL_TYPE!r}) only"
        )
    head_dim = check_text_fields(raw)
    embd = _dict(raw, "embd_layer")
    if not (embd.get("use_hd_transform") and embd.get("with_learnable_separator")):
        raise CheckpointError("config.json: embd_layer must use the HD transform with learnable separators")
    if embd.get("projection_cls", "mlp") != "mlp":
        raise CheckpointError(
            f"config.json: unsupported embd_layer.projection_cls {embd.get('projection_cls')!r}"
        )
    order = embd.get("hd_transform_order", "sub_glb")
    if order not in ("sub_glb", "glb_sub"):
        raise CheckpointError(f"config.json: unsupported embd_layer.hd_transform_order {order!r}")
    img_processor = _dict(raw, "img_processor")
    if img_processor.get("type_feature", "patch") != "patch":
        raise CheckpointError("config.json: only img_processor.type_feature 'patch' is supported")

    vision_kwargs = dict(CLIP_VIT_L14_336)
    vision_kwargs.update(_dict(raw, "vision_config"))
    for field, most in _VISION_SIZES.items():
        _size(vision_kwargs, field, most, where="vision_config.")
    if vision_kwargs["hidden_size"] % vision_kwargs["num_attention_heads"]:
        raise _fail("vision_config.hidden_size", "must be a multiple of vision_config.num_attention_heads")
    _number(vision_kwargs, "layer_norm_eps", where="vision_config.")
    vision = _build("vision_config", CLIPVisionConfig, vision_kwargs)
    vision._attn_implementation = attn_implementation
    if vision.image_size != 336 or vision.patch_size != 14:
        raise CheckpointError(
            f"config.json: the vision tower must take 336x336 images in 14-pixel patches, "
            f"got image_size {vision.image_size} and patch_size {vision.patch_size}"
        )

    text_kwargs = {k: v for k, v in raw.items() if k not in _NOT_FOR_PHI3}
    text_kwargs["rope_parameters"] = rope_parameters(raw, head_dim)
    text_kwargs.pop("rope_scaling", None)
    text_kwargs.pop("rope_theta", None)
    window = text_kwargs.get("sliding_window")
    if window is not None and window >= int(raw.get("max_position_embeddings", 4096)):
        # A window as long as the context never excludes a key: plain causal attention is the
        # same computation, and it keeps the KV cache free of per-step Python state (which
        # would make torch.compile recompile at every step).
        text_kwargs["sliding_window"] = None
    text = _build("the language model's config", Phi3Config, text_kwargs)
    text._attn_implementation = attn_implementation

    image_dim_out = _size(img_processor, "image_dim_out", 1 << 16, vision.hidden_size, "img_processor.")
    layer_idx = img_processor.get("layer_idx", -2)
    layers = vision.num_hidden_layers
    if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or not -layers <= layer_idx < 0:
        raise _fail("img_processor.layer_idx", f"must be a negative layer index, got {layer_idx!r:.60}")
    if image_dim_out != vision.hidden_size:
        raise CheckpointError(
            f"config.json: img_processor.image_dim_out ({image_dim_out}) differs from the "
            f"vision tower's hidden_size ({vision.hidden_size})"
        )
    return Phi3VConfigs(
        text=text,
        vision=vision,
        image_embedding=ImageEmbeddingConfig(
            image_dim_out=image_dim_out,
            hidden_size=raw["hidden_size"],
            layer_idx=layer_idx,
            hd_transform_order=order,
        ),
        bos_token_id=1 if raw.get("bos_token_id") is None else raw["bos_token_id"],
        max_position_embeddings=raw["max_position_embeddings"],
    )


def _build(what: str, config_class: Any, kwargs: dict[str, Any]) -> Any:
    """A transformers config; its validation errors (huggingface_hub's strict dataclass
    errors, TypeError, ValueError, ...) become a CheckpointError quoting the reason."""
    try:
        return config_class(**kwargs)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"config.json: {what} is not valid ({type(exc).__name__}: {reason})") from exc
