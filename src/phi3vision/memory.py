"""Memory planning before loading, from a checkpoint's ``config.json`` alone (torch-free).

Three figures, one function each, every one a count of tensor elements times their size:

- ``weight_bytes``: the parameters at a dtype, the language model's linear layers at the
  quantisation's size per weight when one is chosen;
- ``kv_cache_bytes_per_token``: keys and values of every layer for one position of one sequence;
- ``activation_peak_bytes``: the largest transient of one call with N images at num_crops: the
  vision stage (pixel values, CLIP's kept hidden states, one layer's work) or the prefill
  (one decoder layer's work over the whole prompt, the image features waiting to be placed).

``plan_memory`` puts them together for a checkpoint (directory or Hub id; only config.json and
preprocessor_config.json are read) and is what ``phi3vision info --model`` shows.
``from_pretrained`` on a CPU warns with one ``MemoryWarning`` (a ``UserWarning``, so
``warnings.simplefilter("ignore", phi3vision.MemoryWarning)`` silences it) when the plan for
one image exceeds the memory available.

The figures are what the tensors need; the Python process, the tokenizer and the allocator's
slack come on top (about 0.3-0.5 GB on a CPU). docs/loading.md compares them with measurements.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import CheckpointError, OptionsError
from .loading import CONFIG_FILES, _read_json, default_model, resolve_directory
from .modeling.config import CLIP_VIT_L14_336, check_text_fields
from .quantization import INT4_GROUP_SIZE, NF4_BLOCK_SIZE, QUANTIZE_LM_HEAD, check_quantization

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

AUTO_DTYPE = {"cpu": "float32", "cuda": "bfloat16", "mps": "float16"}
"""What ``dtype="auto"`` loads on each device type (cuda: float16 on GPUs without bfloat16)."""

DEFAULT_TEXT_TOKENS = 64
"""Text positions of the planned prompt besides its images (a question and the chat markers)."""

CLIP_TOKENS = (336 // 14) ** 2 + 1
"""Positions of one CLIP view: 24x24 patches and the class token."""


class MemoryWarning(UserWarning):
    """The memory plan of a model exceeds the memory available on its device."""


class MemoryPlan(BaseModel):
    """Planned memory of a model on a device, in bytes (``phi3vision info --model``)."""

    model_config = ConfigDict(frozen=True)

    device: str
    dtype: str
    quantization: str | None
    num_images: int
    num_crops: int
    prompt_tokens: int = Field(description="Positions of the planned prompt (text and images)")
    max_new_tokens: int
    weights_bytes: int
    kv_cache_bytes_per_token: int
    kv_cache_bytes: int = Field(description="The KV cache at prompt_tokens + max_new_tokens")
    activation_peak_bytes: int
    total_bytes: int = Field(description="weights + KV cache + activation peak")


def _sizes(config: Mapping[str, Any]) -> dict[str, int]:
    """The sizes the formulas need, from a Phi-3-vision config.json (CLIP ViT-L/14-336 unless
    the config states its own ``vision_config``)."""
    check_text_fields(dict(config))  # a damaged size is a CheckpointError naming its field
    vision = {**CLIP_VIT_L14_336, **(config.get("vision_config") or {})}
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        return {
            "hidden": hidden,
            "layers": int(config["num_hidden_layers"]),
            "heads": heads,
            "kv_heads": int(config.get("num_key_value_heads") or heads),
            "head_dim": hidden // heads,
            "intermediate": int(config["intermediate_size"]),
            "vocab": int(config["vocab_size"]),
            "tied": int(bool(config.get("tie_word_embeddings", False))),
            "vision_hidden": int(vision["hidden_size"]),
            "vision_layers": int(vision["num_hidden_layers"]),
            "vision_heads": int(vision["num_attention_heads"]),
            "vision_intermediate": int(vision["intermediate_size"]),
        }
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"config.json lacks a valid language-model size ({exc})") from exc


def parameter_counts(config: Mapping[str, Any]) -> dict[str, int]:
    """Parameters by part: ``decoder_linear`` (the decoder layers' linear weights), ``lm_head``,
    ``embedding``, ``language_other`` (norms), ``vision`` (CLIP) and ``projector`` (HD glue)."""
    s = _sizes(config)
    h, i, kv = s["hidden"], s["intermediate"], s["kv_heads"] * s["head_dim"]
    per_layer_linear = h * (h + 2 * kv) + h * h + h * 2 * i + i * h  # qkv, o, gate_up, down
    vh, vi = s["vision_hidden"], s["vision_intermediate"]
    vision = (
        3 * 14 * 14 * vh
        + vh
        + CLIP_TOKENS * vh  # patch conv, class embedding, positions
        + 4 * vh  # pre and post layer norms
        + s["vision_layers"] * (4 * (vh * vh + vh) + vh * vi + vi + vi * vh + vh + 4 * vh)
    )
    merged = 4 * vh
    return {
        "decoder_linear": s["layers"] * per_layer_linear,
        "lm_head": 0 if s["tied"] else s["vocab"] * h,
        "embedding": s["vocab"] * h,
        "language_other": (2 * s["layers"] + 1) * h,
        "vision": vision,
        "projector": 2 * merged + merged * h + h + h * h + h,
    }


def _quantized_bytes(params: int, rows: int, scheme: str) -> float:
    """Bytes of ``params`` weights in ``rows`` output rows stored with ``scheme``."""
    if scheme == "int8":
        return params + 2 * rows  # int8 data, one bfloat16 scale per row
    if scheme == "int4":
        return params / 2 + 4 * params / INT4_GROUP_SIZE  # bfloat16 scale and zero per group
    return params / 2 + 4 * params / NF4_BLOCK_SIZE  # nf4: float32 absmax per block


def weight_bytes(config: Mapping[str, Any], dtype: str, quantization: str | None = None) -> int:
    """Bytes of all parameters at ``dtype``; with ``quantization`` the decoder layers' linear
    weights (and lm_head, see ``phi3vision.quantization``) at the scheme's size instead."""
    counts = parameter_counts(config)
    size = DTYPE_BYTES[dtype]
    if quantization is None:
        return sum(counts.values()) * size
    s = _sizes(config)
    h, i, kv = s["hidden"], s["intermediate"], s["kv_heads"] * s["head_dim"]
    quantized = counts["decoder_linear"]
    rows = s["layers"] * ((h + 2 * kv) + h + 2 * i + h)
    if QUANTIZE_LM_HEAD and counts["lm_head"]:
        quantized += counts["lm_head"]
        rows += s["vocab"]
    full = sum(counts.values()) - quantized
    return int(full * size + _quantized_bytes(quantized, rows, quantization))


def kv_cache_bytes_per_token(config: Mapping[str, Any], dtype: str) -> int:
    """Keys and values of every decoder layer for one position of one sequence."""
    s = _sizes(config)
    return 2 * s["layers"] * s["kv_heads"] * s["head_dim"] * DTYPE_BYTES[dtype]


def image_tokens(num_crops: int) -> int:
    """The most prompt positions one image takes at ``num_crops``: a grid of num_crops x 1
    crops, ``(num_crops + 1) * 144`` tokens plus a separator per token row and one more."""
    return (num_crops + 1) * 144 + 1 + (num_crops + 1) * 12


def activation_peak_bytes(
    config: Mapping[str, Any],
    dtype: str,
    num_images: int = 1,
    num_crops: int = 16,
    prompt_tokens: int | None = None,
    *,
    quantization: str | None = None,
    device_type: str = "cpu",
) -> int:
    """The largest transient memory of one call (batch 1), the larger of two stages.

    Vision: ``V = num_images * (num_crops + 1)`` views of ``T = 577`` positions; the float32
    pixel values and their copy at ``dtype``, every CLIP hidden state (they are all kept to
    pick the second-to-last), and one layer's q, k, v, attention output and MLP.

    Prefill over ``P`` prompt positions (default: the images plus ``DEFAULT_TEXT_TOKENS``):
    the image features at the language model's width, the embeddings and the residual stream,
    and one decoder layer's qkv, rotated q and k, attention output, gate_up, the gated
    product and the MLP output. Attention itself is PyTorch's fused kernel (no ``P x P``
    scores) and only the last position's logits are computed. With int8 on a CPU the largest
    quantised linear (gate_up) also holds its input and output in bfloat16, the dtype its
    kernel computes in (``modeling.quantized.Int8CpuLinear``).
    """
    s = _sizes(config)
    size = DTYPE_BYTES[dtype]
    views = num_images * (num_crops + 1)
    vh, vi = s["vision_hidden"], s["vision_intermediate"]
    pixels = views * 3 * 336 * 336
    vision = (
        pixels * (4 + size)
        + (s["vision_layers"] + 1) * views * CLIP_TOKENS * vh * size
        + views * CLIP_TOKENS * (4 * vh + vi) * size
    )
    image_positions = num_images * image_tokens(num_crops)
    positions = prompt_tokens if prompt_tokens is not None else image_positions + DEFAULT_TEXT_TOKENS
    h, i, qkv = s["hidden"], s["intermediate"], s["hidden"] + 2 * s["kv_heads"] * s["head_dim"]
    prefill = image_positions * h * size + positions * (3 * h + 2 * qkv + 3 * i + h) * size
    if quantization == "int8" and device_type == "cpu":
        prefill += positions * (h + 2 * i) * DTYPE_BYTES["bfloat16"]
    return max(vision, prefill) + s["vocab"] * 4


def read_config(name_or_path: str | Path | None = None, revision: str | None = None) -> dict[str, Any]:
    """A checkpoint's config.json, with its preprocessor's ``num_crops`` under ``"num_crops"``:
    from a local directory, or only those two files from the Hub (no weights are fetched), by
    the rules of loading: every Hub request has a timeout, and a Hub that cannot be used is a
    ``HubUnavailableError`` naming the ways out."""
    name = default_model() if name_or_path is None else name_or_path
    directory = resolve_directory(name, revision, files=CONFIG_FILES)
    config = _read_json(directory / "config.json")
    preprocessor_file = directory / "preprocessor_config.json"
    crops = _read_json(preprocessor_file).get("num_crops", 16) if preprocessor_file.is_file() else 16
    return {**config, "num_crops": crops}


def plan_memory(
    model: str | Path | Mapping[str, Any] | None = None,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    quantization: str | None = None,
    num_images: int = 1,
    num_crops: int | None = None,
    prompt_tokens: int | None = None,
    max_new_tokens: int = 256,
    revision: str | None = None,
) -> MemoryPlan:
    """The memory a checkpoint needs on ``device`` ("cpu", "cuda", "cuda:N", "mps") at
    ``dtype`` ("auto" as ``from_pretrained`` would choose) and ``quantization``, for one call
    with ``num_images`` images at ``num_crops`` (default: the checkpoint's). ``model`` is a
    directory, a Hub id (only the config files are fetched) or a config dict; torch is not
    imported. An impossible device, dtype or scheme is an ``OptionsError``."""
    config = dict(model) if isinstance(model, Mapping) else read_config(model, revision)
    device_type = device.split(":")[0]
    if device_type not in AUTO_DTYPE:
        raise OptionsError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    from .devices import DTYPES

    dtype_name = AUTO_DTYPE[device_type] if dtype == "auto" else DTYPES.get(dtype.removeprefix("torch."))
    if dtype_name is None:
        raise OptionsError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'float16' or 'bfloat16'")
    check_quantization(quantization, device_type, dtype_name)
    crops = int(num_crops if num_crops is not None else config.get("num_crops", 16))
    if num_images < 0 or crops < 1 or max_new_tokens < 0:
        raise OptionsError("num_images and max_new_tokens must be >= 0 and num_crops >= 1")
    positions = (
        prompt_tokens if prompt_tokens is not None else num_images * image_tokens(crops) + DEFAULT_TEXT_TOKENS
    )
    weights = weight_bytes(config, dtype_name, quantization)
    per_token = kv_cache_bytes_per_token(config, dtype_name)
    kv_cache = per_token * (positions + max_new_tokens)
    activations = activation_peak_bytes(
        config, dtype_name, num_images, crops, positions, quantization=quantization, device_type=device_type
    )
    return MemoryPlan(
        device=device,
        dtype=dtype_name,
        quantization=quantization,
        num_images=num_images,
        num_crops=crops,
        prompt_tokens=positions,
        max_new_tokens=max_new_tokens,
        weights_bytes=weights,
        kv_cache_bytes_per_token=per_token,
        kv_cache_bytes=kv_cache,
        activation_peak_bytes=activations,
        total_bytes=weights + kv_cache + activations,
    )


def available_bytes(device_type: str) -> int | None:
    """Memory available to a new model on a CPU: ``MemAvailable`` of /proc/meminfo (Linux),
    else psutil's figure when it is installed; None when unknown."""
    if device_type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def warn_if_over_memory(
    config: Mapping[str, Any], device_type: str, dtype: str, quantization: str | None, num_crops: int
) -> None:
    """One ``MemoryWarning`` when the plan for one image exceeds the available CPU memory
    (``PHI3VISION_NO_MEMORY_CHECK=1`` skips the check)."""
    if device_type != "cpu" or os.environ.get("PHI3VISION_NO_MEMORY_CHECK") == "1":
        return
    available = available_bytes(device_type)
    if available is None:
        return
    dtype_name = AUTO_DTYPE["cpu"] if dtype == "auto" else dtype
    if dtype_name not in DTYPE_BYTES:
        return  # an invalid dtype is reported by the loader with its own error
    check_quantization(quantization, device_type, dtype_name)
    plan = plan_memory(config, device="cpu", dtype=dtype_name, quantization=quantization, num_crops=num_crops)
    if plan.total_bytes > available:
        warnings.warn(
            f"this model needs about {plan.total_bytes / 2**30:.1f} GiB on the CPU ({dtype_name}"
            f"{', ' + quantization if quantization else ''}; one image at num_crops {num_crops}), "
            f"but only {available / 2**30:.1f} GiB is available; try quantization='int8' or dtype='bfloat16'",
            MemoryWarning,
            stacklevel=_caller_stacklevel(),
        )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside phi3vision (the
    user's ``from_pretrained`` line), however deep inside the library it is raised."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)  # the function that warns
    level = 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame = frame.f_back
        level += 1
    return level
