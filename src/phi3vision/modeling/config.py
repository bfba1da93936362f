"""A checkpoint's ``config.json`` (``model_type`` phi3_v) -> the configs of the modules we build.

Pure functions over dicts: no file access here (``loading`` reads the file).
"""

from __future__ import annotations

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


def rope_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """transformers 5's ``rope_parameters`` for the checkpoint's rotary settings.

    The checkpoints say ``rope_scaling: {type: "su", short_factor, long_factor}`` (the name
    LongRoPE had when they were released) next to a top-level
    ``original_max_position_embeddings``. "su" is "longrope": short factors while the
    sequence fits the original 4096 positions, long factors beyond, and cos/sin scaled by
    ``sqrt(1 + ln(max / original) / ln(original))``.
    """
    theta = float(raw.get("rope_theta", 10000.0))
    scaling = raw.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind not in ("su", "longrope"):
        raise CheckpointError(f"config.json: unsupported rope_scaling type {kind!r} (expected 'su')")
    try:
        original = int(raw["original_max_position_embeddings"])
        return {
            "rope_type": "longrope",
            "rope_theta": theta,
            "short_factor": list(scaling["short_factor"]),
            "long_factor": list(scaling["long_factor"]),
            "original_max_position_embeddings": original,
            "factor": int(raw.get("max_position_embeddings", original)) / original,
        }
    except KeyError as exc:
        raise CheckpointError(f"config.json: rope_scaling needs {exc.args[0]!r}") from exc


def build_configs(raw: dict[str, Any], attn_implementation: str = "sdpa") -> Phi3VConfigs:
    """Turn a checkpoint config dict into our module configs, checking what we depend on."""
    from transformers import CLIPVisionConfig, Phi3Config

    if raw.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"config.json has model_type {raw.get('model_type')!r}; phi3vision loads "
            f"Phi-3-vision checkpoints (model_type {MODEL_TYPE!r}) only"
        )
    embd = raw.get("embd_layer") or {}
    if not (embd.get("use_hd_transform") and embd.get("with_learnable_separator")):
        raise CheckpointError("config.json: embd_layer must use the HD transform with learnable separators")
    if embd.get("projection_cls", "mlp") != "mlp":
        raise CheckpointError(
            f"config.json: unsupported embd_layer.projection_cls {embd.get('projection_cls')!r}"
        )
    order = embd.get("hd_transform_order", "sub_glb")
    if order not in ("sub_glb", "glb_sub"):
        raise CheckpointError(f"config.json: unsupported embd_layer.hd_transform_order {order!r}")
    img_processor = raw.get("img_processor") or {}
    if img_processor.get("type_feature", "patch") != "patch":
        raise CheckpointError("config.json: only img_processor.type_feature 'patch' is supported")

    vision_kwargs = dict(CLIP_VIT_L14_336)
    vision_kwargs.update(raw.get("vision_config") or {})
    vision = CLIPVisionConfig(**vision_kwargs)
    vision._attn_implementation = attn_implementation
    if vision.image_size != 336 or vision.patch_size != 14:
        raise CheckpointError(
            f"config.json: the vision tower must take 336x336 images in 14-pixel patches, "
            f"got image_size {vision.image_size} and patch_size {vision.patch_size}"
        )

    text_kwargs = {k: v for k, v in raw.items() if k not in _NOT_FOR_PHI3}
    text_kwargs["rope_parameters"] = rope_parameters(raw)
    text_kwargs.pop("rope_scaling", None)
    text_kwargs.pop("rope_theta", None)
    window = text_kwargs.get("sliding_window")
    if window is not None and window >= int(raw.get("max_position_embeddings", 4096)):
        # A window as long as the context never excludes a key: plain causal attention is the
        # same computation, and it keeps the KV cache free of per-step Python state (which
        # would make torch.compile recompile at every step).
        text_kwargs["sliding_window"] = None
    try:
        text = Phi3Config(**text_kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"config.json: not a valid Phi-3 language model config: {exc}") from exc
    text._attn_implementation = attn_implementation

    image_dim_out = int(img_processor.get("image_dim_out", vision.hidden_size))
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
            hidden_size=int(raw["hidden_size"]),
            layer_idx=int(img_processor.get("layer_idx", -2)),
            hd_transform_order=order,
        ),
        bos_token_id=int(raw.get("bos_token_id", 1)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
    )
