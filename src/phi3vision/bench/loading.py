"""Section ``loading``: peak memory and time of ``from_pretrained`` against the weights' size."""

from __future__ import annotations

import statistics
from typing import Any

from .harness import Bench, Section
from .measure import ratio, stat
from .memory import column, probe_runs
from .tables import mib, spread, spread_bytes, table, times

LOADING_TARGET = 1.3
"""Target for the memory a load adds (peak RSS) / the weights' size at the loaded dtype."""


def section_loading(bench: Bench) -> dict[str, Any]:
    """Peak RSS while loading against the weights' size at the loaded dtype, in a fresh process."""
    runs = probe_runs(bench)
    weights = int(runs[0]["weights_bytes"])
    added = [float(r["load_peak_rss_bytes"] - r["rss_before_load_bytes"]) for r in runs]
    cuda = column(runs, "load_cuda_max_allocated_bytes", "bytes")
    files = [*bench.settings.checkpoint.glob("*.safetensors")]
    return {
        "weights_bytes": weights,
        "file_bytes": sum(f.stat().st_size for f in files),
        "rss_before_bytes": column(runs, "rss_before_load_bytes", "bytes"),
        "peak_rss_bytes": column(runs, "load_peak_rss_bytes", "bytes"),
        "load_added_rss_bytes": stat(added, "bytes"),
        "added_rss_over_weights": ratio(statistics.median(added), weights),
        "cuda_max_allocated_bytes": cuda,
        "cuda_over_weights": ratio(cuda["median"], weights) if cuda is not None else None,
        "load_s": column(runs, "load_s", "s"),
        "target_ratio": LOADING_TARGET,
        "method": runs[0]["method"],
    }


def _md_loading(body: dict[str, Any]) -> str:
    rows = [
        ["weights at the loaded dtype", mib(body["weights_bytes"])],
        ["safetensors files", mib(body["file_bytes"])],
        ["RSS before from_pretrained", spread_bytes(body["rss_before_bytes"])],
        ["peak RSS during from_pretrained", spread_bytes(body["peak_rss_bytes"])],
        ["RSS added by the load (peak - before)", spread_bytes(body["load_added_rss_bytes"])],
        ["added RSS / weights", times(body["added_rss_over_weights"])],
        ["torch.cuda.max_memory_allocated", spread_bytes(body["cuda_max_allocated_bytes"])],
        ["load time s", spread(body["load_s"])],
    ]
    return (
        table(["loading (fresh process per run)", "value"], rows)
        + f"\n\nTarget: added RSS / weights < {body['target_ratio']}. Peak: {body['method']}."
    )


SECTION = Section("loading", "Loading", section_loading, _md_loading)
