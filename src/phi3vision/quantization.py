"""Quantised loading: the language model's linear layers stored as int8, int4 or nf4 weights.

What is quantised: every ``nn.Linear`` of the Phi-3 decoder layers (attention ``qkv_proj``,
``o_proj``, MLP ``gate_up_proj``, ``down_proj``) and ``lm_head`` (measured: it costs little of
the greedy top-1 agreement, see ``QUANTIZE_LM_HEAD`` and docs/performance.md). The token
embeddings, the norms, the CLIP vision tower and the image projector stay at the model's dtype:
they are a small part of the weights and the image features are the most sensitive to rounding.

The schemes, each from a well-kept library (``pip install 'phi3vision[quant]'``):

========  ======  ==========================================================================
scheme    device  how
========  ======  ==========================================================================
int8      cpu     torchao's symmetric per-row int8 quantisation (``Int8Tensor.from_hp``);
                  the matmul is PyTorch's int8 weight-only kernel ``_weight_int8pack_mm``
                  in bfloat16 (torchao's own int8 linear dequantises the whole weight on
                  every call in eager mode: measured 12x slower than float32 at batch 1)
int8      cuda    torchao ``Int8WeightOnlyConfig``
int4      cuda    torchao ``Int4WeightOnlyConfig`` (group size 128, tinygemm layout); bfloat16
nf4       cuda    bitsandbytes ``Linear4bit`` (``quant_type="nf4"``), computing in the model dtype
========  ======  ==========================================================================

Layers are quantised one at a time while the checkpoint is read (``loading.load_weights``),
so the full-precision model never exists whole: the peak is the quantised model plus one
full-precision weight.

``check_quantization`` is torch-free (the memory planner and the CLI use it); the rest
imports torch when called.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from .errors import MissingExtraError, OptionsError

if TYPE_CHECKING:
    import torch
    from torch import nn

SCHEMES = ("int8", "int4", "nf4")
"""The accepted ``quantization`` values (``None`` loads every weight at the model dtype)."""

SUPPORTED_DEVICES = {"int8": ("cpu", "cuda"), "int4": ("cuda",), "nf4": ("cuda",)}
"""Device types on which each scheme runs."""

INSTALL_HINT = "pip install 'phi3vision[quant]'"

QUANTIZE_LM_HEAD = True
"""Whether ``lm_head`` is quantised too. Measured on the bench's random weights (float32
simulation): int8 in ``lm_head`` alone keeps 98.7% top-1 agreement, int8 in the decoder layers
alone 90.6%; kept in float32 it would add 0.28 GiB to the real model's int8 plan and its
bytes to every decoded token."""

INT4_GROUP_SIZE = 128
NF4_BLOCK_SIZE = 64
"""bitsandbytes' default nf4 block: one float32 absmax per 64 weights."""

_LIBRARY = {"int8": "torchao", "int4": "torchao", "nf4": "bitsandbytes"}


def check_quantization(scheme: str | None, device_type: str, dtype: str) -> str | None:
    """``scheme`` checked against the device type ("cpu", "cuda", "mps") and dtype name
    ("float32", "bfloat16", "float16"): the scheme, or ``None`` for no quantisation.
    An unknown scheme or an unsupported device/dtype pairing is an ``OptionsError``."""
    if scheme is None:
        return None
    if scheme not in SCHEMES:
        raise OptionsError(
            f"unknown quantization {scheme!r}: use None, " + ", ".join(repr(s) for s in SCHEMES)
        )
    devices = SUPPORTED_DEVICES[scheme]
    if device_type not in devices:
        hint = " (on a CPU use quantization='int8')" if device_type == "cpu" else ""
        raise OptionsError(f"quantization={scheme!r} runs on {' or '.join(devices)}, not {device_type}{hint}")
    if scheme == "int4" and dtype != "bfloat16":
        raise OptionsError(
            f"quantization='int4' computes in bfloat16 (torchao's int4 kernel); use dtype='bfloat16', "
            f"not {dtype!r}"
        )
    return scheme


def require_library(scheme: str) -> None:
    """Raise one ``MissingExtraError`` naming the extra when the scheme's library is missing."""
    library = _LIBRARY[scheme]
    if importlib.util.find_spec(library) is None:
        raise MissingExtraError(
            f"quantization={scheme!r} needs {library}, which is not installed: {INSTALL_HINT}"
        )


def is_quantization_target(name: str, module: nn.Module) -> bool:
    """Whether the module called ``name`` (in ``Phi3VForCausalLM``) is quantised."""
    from torch import nn

    if not isinstance(module, nn.Linear):
        return False
    if name == "language_model.lm_head":
        return QUANTIZE_LM_HEAD
    return name.startswith("language_model.model.layers.")


def quantize_linear(linear: nn.Linear, scheme: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The quantised replacement of ``linear``, whose weights are loaded (at any float dtype:
    the checkpoint's, to skip a full-precision copy), on ``device``; ``dtype`` is the model's."""
    if scheme == "int8" and device.type == "cpu":
        from .modeling.quantized import Int8CpuLinear

        return Int8CpuLinear.from_linear(linear, dtype)
    linear = linear.to(device=device, dtype=dtype)
    if scheme == "nf4":
        return _bitsandbytes_nf4(linear, device)
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    if scheme == "int8":
        quantize_(linear, Int8WeightOnlyConfig())
    else:
        quantize_(
            linear, Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d")
        )
    return linear


def _bitsandbytes_nf4(linear: nn.Linear, device: torch.device) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=linear.weight.dtype,
        compress_statistics=False,
        quant_type="nf4",
        device="cpu",
    )
    layer.weight = bnb.nn.Params4bit(
        linear.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=False
    )
    if linear.bias is not None:
        layer.bias = linear.bias
    return layer.to(device)  # bitsandbytes quantises when the weight moves to the GPU
