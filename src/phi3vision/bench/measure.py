"""Measuring: stats of runs, a device-synchronised clock, resident memory, the machine."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

T = TypeVar("T")


def stat(values: Sequence[float], unit: str) -> dict[str, Any]:
    """Median, min and max of some runs, with the raw values (for anyone re-analysing them)."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
        "unit": unit,
        "values": [float(v) for v in values],
    }


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def repeat(runs: int, once: Callable[[], T]) -> list[T]:
    """``runs`` results of ``once`` after one warm-up call whose result is dropped (first calls
    pay for lazy imports, allocator growth and kernel selection, which no later call repeats)."""
    once()
    return [once() for _ in range(runs)]


class Clock:
    """Wall-clock timing that waits for the device, so that queued GPU work is counted."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def time(self, work: Callable[[], T]) -> tuple[float, T]:
        self.sync()
        start = time.perf_counter()
        result = work()
        self.sync()
        return time.perf_counter() - start, result


def _status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (Linux), else None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return None


class RssMeter:
    """Resident memory of this process, now and at its peak.

    On Linux a process may reset its peak (VmHWM) by writing 5 to /proc/self/clear_refs, so each
    peak covers only the work after the reset; elsewhere the peak is the lifetime peak from
    getrusage, and ``method`` says so.
    """

    def __init__(self) -> None:
        self.process_peak = 0
        self.resettable = self.reset()
        self.method = (
            "VmHWM after a reset through /proc/self/clear_refs"
            if self.resettable
            else "getrusage ru_maxrss (lifetime peak of the process)"
        )

    @staticmethod
    def current() -> int:
        found = _status_bytes("VmRSS")
        if found is not None:
            return found
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except ImportError:
            return 0

    @staticmethod
    def peak() -> int:
        found = _status_bytes("VmHWM")
        if found is not None:
            return found
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        except ImportError:
            return 0
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes; else kB

    def reset(self) -> bool:
        self.process_peak = max(self.process_peak, self.peak())
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            return False
        return True

    def overall_peak(self) -> int:
        return max(self.process_peak, self.peak())


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic RGB image of random pixels. Resize and transform costs do not depend on
    the content; distinct seeds give distinct images, so no cache can answer for another."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers depend on. The load average shows how busy the machine was."""
    import torch
    import transformers

    from .. import __version__

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "phi3vision": __version__,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model_name(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "cuda_version": torch.version.cuda,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import psutil

        info["memory_bytes"] = int(psutil.virtual_memory().total)
    except ImportError:
        info["memory_bytes"] = None
    return info
