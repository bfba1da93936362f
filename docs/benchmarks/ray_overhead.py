"""Ray overhead against the in-process batch job (docs/scaling.md): the tiny golden
checkpoint over N distinct random 256x256 images, in-process and with map_images on 1 and 2
actors of a local 2-CPU Ray. Prints one JSON line.

Run from the repository root: N=24 RUNS=3 python docs/benchmarks/ray_overhead.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
import ray.data
from PIL import Image

from phi3vision import VisionModel
from phi3vision.jobs import collect_items, run_batch
from phi3vision.ray import map_images

N = int(os.environ.get("N", 24))
RUNS = int(os.environ.get("RUNS", 3))
CHECKPOINT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "phi3v-tiny" / "checkpoint"
WORK = Path(os.environ.get("WORK", "/tmp/ray-overhead"))
GENERATION = {"max_new_tokens": 16}
MODEL = {"device": "cpu", "dtype": "float32", "num_crops": 1}


def images() -> list[str]:
    folder = WORK / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(N):
        path = folder / f"img{i:03d}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
    return [str(folder / f"img{i:03d}.png") for i in range(N)]


def in_process(paths: list[str]) -> float:
    import torch

    torch.set_num_threads(1)  # as in a Ray actor at num_cpus < 2 (Ray sets OMP_NUM_THREADS=1)
    started = time.perf_counter()
    with VisionModel.from_pretrained(CHECKPOINT, **MODEL) as vm:
        out = WORK / "in-process.jsonl"
        out.unlink(missing_ok=True)
        run_batch(vm, "describe", collect_items(paths), out, options=GENERATION, progress=False)
    return time.perf_counter() - started


def on_ray(paths: list[str], actors: int) -> float:
    started = time.perf_counter()
    ds = ray.data.from_items([{"path": path} for path in paths])
    rows = map_images(ds, model=CHECKPOINT, concurrency=actors, **MODEL, **GENERATION).take_all()
    assert len(rows) == N and all(row["status"] == "done" for row in rows)
    return time.perf_counter() - started


def main() -> None:
    warnings.simplefilter("ignore")
    paths = images()
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    report: dict[str, object] = {"n": N, "ray_init_s": time.perf_counter() - started}
    report["load_start"] = os.getloadavg()[0]
    ray.data.DataContext.get_current().enable_progress_bars = False
    cases: dict[str, Callable[[], float]] = {
        "in_process": lambda: in_process(paths),
        "ray_1_actor": lambda: on_ray(paths, 1),
        "ray_2_actors": lambda: on_ray(paths, 2),
    }
    for name, case in cases.items():
        values = [case() for _ in range(RUNS)]
        report[name] = {"median_s": statistics.median(values), "values": values}
        print(name, values, file=sys.stderr, flush=True)
    report["load_end"] = os.getloadavg()[0]
    ray.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
