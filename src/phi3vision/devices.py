"""Device, dtype and attention-implementation choices, with the reason for each.

``"auto"`` picks: cuda, then mps, then cpu; bfloat16 on GPUs that support it, float16 on other
GPUs and mps, float32 on cpu; flash_attention_2 where flash-attn is importable on cuda in
fp16/bf16, else sdpa. An explicit choice that cannot be honoured is a ``DeviceError``, never a
silent switch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    import torch

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


@dataclass(frozen=True)
class Choice:
    value: str
    reason: str


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def choose_device(requested: str | torch.device = "auto") -> tuple[torch.device, Choice]:
    import torch

    text = str(requested)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), Choice("cuda", "auto: a CUDA GPU is available")
        if _mps_available():
            return torch.device("mps"), Choice("mps", "auto: no CUDA GPU; Apple MPS is available")
        return torch.device("cpu"), Choice("cpu", "auto: no CUDA GPU or MPS available")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"unknown device {text!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {text!r} was asked for, but no CUDA GPU is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' was asked for, but MPS is not available here")
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device type {device.type!r}: use 'cpu', 'cuda' or 'mps'")
    return device, Choice(str(device), "requested")


def _bf16_supported(device: torch.device) -> bool:
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def choose_dtype(requested: str | torch.dtype, device: torch.device) -> tuple[torch.dtype, Choice]:
    import torch

    text = str(requested).removeprefix("torch.")
    if text == "auto":
        if device.type == "cuda":
            if _bf16_supported(device):
                return torch.bfloat16, Choice("bfloat16", "auto: the GPU supports bfloat16")
            return torch.float16, Choice("float16", "auto: the GPU has no bfloat16 support")
        if device.type == "mps":
            return torch.float16, Choice("float16", "auto: half precision on MPS")
        return torch.float32, Choice("float32", "auto: full precision on CPU")
    name = DTYPES.get(text)
    if name is None:
        raise DeviceError(f"unknown dtype {text!r}: use 'auto', 'float32', 'float16' or 'bfloat16'")
    if name == "bfloat16" and not _bf16_supported(device):
        raise DeviceError(f"bfloat16 is not supported on {device}; use dtype='float16' or 'auto'")
    if name == "float16" and device.type == "cpu":
        raise DeviceError("float16 on CPU is very slow and lossy; use 'float32' or 'bfloat16' on CPU")
    dtype: torch.dtype = getattr(torch, name)
    return dtype, Choice(name, "requested")


def choose_attn_implementation(requested: str, device: torch.device, dtype: torch.dtype) -> Choice:
    import torch

    flash_ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if requested == "auto":
        if flash_ok and flash_attn_available():
            return Choice("flash_attention_2", "auto: flash-attn is installed and the GPU runs fp16/bf16")
        why = "flash-attn is not installed" if flash_ok else "flash-attn needs a CUDA GPU in fp16/bf16"
        return Choice("sdpa", f"auto: PyTorch scaled_dot_product_attention ({why})")
    if requested not in ATTN_IMPLEMENTATIONS:
        raise DeviceError(
            f"unknown attn_implementation {requested!r}: use 'auto', "
            + ", ".join(repr(a) for a in ATTN_IMPLEMENTATIONS)
        )
    if requested == "flash_attention_2":
        if not flash_ok:
            raise DeviceError(
                f"flash_attention_2 needs a CUDA GPU and float16/bfloat16, not {device.type} in "
                f"{str(dtype).removeprefix('torch.')}; use attn_implementation='sdpa'"
            )
        if not flash_attn_available():
            raise DeviceError(
                "flash_attention_2 was asked for but flash-attn is not installed: "
                "pip install 'phi3vision[flash]', or use attn_implementation='sdpa'"
            )
    return Choice(requested, "requested")
