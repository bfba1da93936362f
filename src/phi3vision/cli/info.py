"""``phi3vision info``: the environment and what "auto" would choose, without loading a model.

This is the first thing to run (and to paste into a bug report) when a model is slow or does
not load: it shows the versions that matter and the device, dtype and attention the library
would pick here, with the reason for each. With ``--model`` it also shows the memory plan of
that checkpoint (from its config alone: nothing is loaded) for ``--device``, ``--dtype``,
``--quantization`` and ``--num-crops``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from typing import Any

from .. import __version__
from ..loading import MODEL_ENV_VAR, default_model


def _version(distribution: str) -> str | None:
    """Installed version from the package metadata: no need to import transformers (slow)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The memory-plan options of ``phi3vision info``."""
    from ..devices import DTYPES
    from ..quantization import SCHEMES

    group = parser.add_argument_group("memory plan (with --model; nothing is loaded)")
    group.add_argument("--model", metavar="ID_OR_DIR", help="Hub model id or local checkpoint folder")
    group.add_argument("--revision", help="Hub branch, tag or commit to pin")
    group.add_argument(
        "--device", default="auto", help="auto (default: what auto picks here), cpu, cuda, mps"
    )
    group.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="default: auto")
    group.add_argument("--quantization", choices=SCHEMES, help="int8, int4 or nf4 (default: none)")
    group.add_argument("--num-crops", type=int, metavar="N", help="default: the checkpoint's")
    group.add_argument("--num-images", type=int, default=1, metavar="N", help="images per call (default 1)")


def collect_memory(args: argparse.Namespace, auto_device: str) -> dict[str, Any]:
    """The memory plan of ``args.model`` with the memory available (CPU only), JSON-ready."""
    from ..memory import available_bytes, plan_memory

    device = auto_device if args.device == "auto" else args.device
    plan = plan_memory(
        args.model,
        device=device,
        dtype=args.dtype,
        quantization=args.quantization,
        num_images=args.num_images,
        num_crops=args.num_crops,
        revision=args.revision,
    )
    return {
        "model": args.model,
        **plan.model_dump(),
        "available_bytes": available_bytes(device.split(":")[0]),
    }


def format_memory(memory: dict[str, Any]) -> str:
    def gib(value: float) -> str:
        return f"{value / 2**30:.2f} GiB"

    images = f"{memory['num_images']} image(s) at num_crops {memory['num_crops']}"
    tokens = memory["prompt_tokens"] + memory["max_new_tokens"]
    available = memory["available_bytes"]
    return "\n".join(
        [
            f"memory plan    {memory['model']} on {memory['device']}, {memory['dtype']}, "
            f"quantization {memory['quantization'] or 'none'}",
            f"  weights      {gib(memory['weights_bytes'])}",
            f"  KV cache     {memory['kv_cache_bytes_per_token'] / 2**10:.0f} KiB per token; "
            f"{gib(memory['kv_cache_bytes'])} at {tokens} tokens",
            f"  activations  {gib(memory['activation_peak_bytes'])} peak ({images})",
            f"  total        {gib(memory['total_bytes'])}"
            + (f" (available now: {gib(available)})" if available is not None else ""),
        ]
    )


def collect_info() -> dict[str, Any]:
    """The environment as a JSON-ready dict (the ``--json`` output)."""
    import torch

    from ..devices import choose_attn_implementation, choose_device, choose_dtype, flash_attn_available

    cuda_available = bool(torch.cuda.is_available())
    cuda_devices = (
        [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
        if cuda_available
        else []
    )
    mps_backend = getattr(torch.backends, "mps", None)
    device, device_choice = choose_device("auto")
    dtype, dtype_choice = choose_dtype("auto", device)
    attn_choice = choose_attn_implementation("auto", device, dtype)
    flash_installed = flash_attn_available()
    return {
        "phi3vision": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "cuda": {
            "available": cuda_available,
            "version": torch.version.cuda,
            "devices": cuda_devices,
        },
        "mps": {
            "available": bool(mps_backend is not None and mps_backend.is_available()),
            "built": bool(mps_backend is not None and mps_backend.is_built()),
        },
        "flash_attn": {
            "installed": flash_installed,
            "version": _version("flash-attn") if flash_installed else None,
            "usable": attn_choice.value == "flash_attention_2",
        },
        "default_model": default_model(),
        "auto": {
            "device": {"value": device_choice.value, "reason": device_choice.reason},
            "dtype": {"value": dtype_choice.value, "reason": dtype_choice.reason},
            "attn_implementation": {"value": attn_choice.value, "reason": attn_choice.reason},
        },
    }


def format_info(data: dict[str, Any]) -> str:
    """The same facts as ``collect_info``, aligned for reading."""
    cuda = data["cuda"]
    if cuda["available"]:
        cuda_text = f"available, CUDA {cuda['version']}: " + ", ".join(
            f"cuda:{index} {name}" for index, name in enumerate(cuda["devices"])
        )
    else:
        cuda_text = "not available" + (
            f" (torch built for CUDA {cuda['version']})" if cuda["version"] else ""
        )
    mps = data["mps"]
    mps_text = "available" if mps["available"] else "not available" + (" (built)" if mps["built"] else "")
    flash = data["flash_attn"]
    if flash["usable"]:
        flash_text = f"usable (version {flash['version']})"
    elif flash["installed"]:
        flash_text = "installed, but not usable here (needs a CUDA GPU in float16/bfloat16)"
    else:
        flash_text = "not installed (pip install 'phi3vision[flash]' on a CUDA machine)"
    rows = [
        ("phi3vision", data["phi3vision"]),
        ("python", f"{data['python']} ({data['executable']})"),
        ("platform", data["platform"]),
        ("torch", data["torch"]),
        ("transformers", data["transformers"] or "not installed"),
        ("cuda", cuda_text),
        ("mps", mps_text),
        ("flash-attn", flash_text),
        ("default model", f"{data['default_model']} (set ${MODEL_ENV_VAR} to change it)"),
    ]
    lines = [f"{name:<14} {value}" for name, value in rows]
    lines.append("auto would choose:")
    for name, label in (("device", "device"), ("dtype", "dtype"), ("attn_implementation", "attention")):
        choice = data["auto"][name]
        lines.append(f"  {label:<12} {choice['value']:<18} {choice['reason']}")
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    data = collect_info()
    if args.model is not None:
        data["memory"] = collect_memory(args, data["auto"]["device"]["value"])
    text = format_info(data) + ("\n" + format_memory(data["memory"]) if "memory" in data else "")
    print(json.dumps(data) if args.json else text)
    return 0
