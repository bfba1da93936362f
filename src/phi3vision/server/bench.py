"""``python -m phi3vision.server.bench``: throughput of ``phi3vision serve`` under concurrency.

Starts a real server process on 127.0.0.1, then, in each run, sends the same requests once one
after the other and once from ``--clients`` concurrent clients, and reports requests and tokens
per second for both with their ratio. Figures are medians over ``--runs`` runs after a warm-up;
each ratio compares the two halves of one run, so that a busy machine cannot favour one side.

Every request has its own image (so that the feature cache cannot answer for it) and its own
text; decoding is greedy with a fixed ``--max-tokens``. The model is a checkpoint (``--model``)
or random weights of a named size (``--size``, as in ``python -m phi3vision.bench``).
Needs the ``server`` extra. Output: a markdown table on stdout, then one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from PIL import Image

MODEL_NAME = "bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m phi3vision.server.bench",
        description="Throughput of phi3vision serve: sequential requests against concurrent clients.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="checkpoint (Hub id or folder) instead of random weights")
    which.add_argument("--size", default="mid", help="random-weight size: tiny, mid or full (default mid)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-crops", type=int, default=4, help="image crops (default 4)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=16, help="requests per half of a run (default 16)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs after the warm-up (default 3)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (default 32)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="the server's (default 8)")
    parser.add_argument("--batch-window-ms", type=int, default=10, help="the server's (default 10)")
    parser.add_argument("--batch-max-wait-ms", type=int, default=250, help="the server's (default 250)")
    parser.add_argument("--log-level", default="warning", help="the server's (debug logs each batch)")
    return parser


@contextmanager
def checkpoint(args: argparse.Namespace) -> Iterator[str]:
    if args.model is not None:
        yield args.model
        return
    from ..bench import MODEL_SIZES
    from ..testing.checkpoint import tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="phi3vision-server-bench-") as temporary:
        sizes: dict[str, Any] = MODEL_SIZES[args.size]
        yield str(tiny_checkpoint(Path(temporary) / "checkpoint", **sizes))


@contextmanager
def running_server(model: str, args: argparse.Namespace) -> Iterator[str]:
    """A ``phi3vision serve`` process; yields its base URL and stops it on the way out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "phi3vision", "serve", "--model", model, "--served-model-name", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--device", args.device, "--dtype", args.dtype,
        "--num-crops", str(args.num_crops), "--max-tokens", str(args.max_tokens),
        "--max-batch-size", str(args.max_batch_size), "--batch-window-ms", str(args.batch_window_ms),
        "--batch-max-wait-ms", str(args.batch_max_wait_ms),
        "--max-queue", str(max(64, args.requests)), "--log-level", args.log_level,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "PHI3VISION_API_KEY"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 600 s")
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def image_uri(index: int) -> str:
    """A distinct small picture per request: a gradient whose colour depends on ``index``."""
    gradient = Image.linear_gradient("L").resize((336, 336))
    shifts = (index % 256, index // 256 % 256, 128)
    image = Image.merge("RGB", [gradient.point(lambda v, s=shift: (v + s) % 256) for shift in shifts])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def bodies(first: int, count: int, max_tokens: int) -> list[dict[str, Any]]:
    """Requests ``first`` to ``first + count - 1``: none shares its image or text with another."""
    return [
        {
            "model": MODEL_NAME,
            "max_tokens": max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": f"Request {i}: describe the picture."},
                        {"type": "image_url", "image_url": {"url": image_uri(i)}},
                    ],
                }
            ],
        }
        for i in range(first, first + count)
    ]


def send(url: str, body: dict[str, Any]) -> int:
    """One request; returns its completion tokens."""
    answer = requests.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    answer.raise_for_status()
    return int(answer.json()["usage"]["completion_tokens"])


def timed(url: str, requests_: Sequence[dict[str, Any]], clients: int) -> tuple[float, int]:
    """Seconds and completion tokens for all ``requests_`` from ``clients`` threads (1: in order)."""
    started = time.perf_counter()
    if clients == 1:
        tokens = [send(url, body) for body in requests_]
    else:
        with ThreadPoolExecutor(clients) as pool:
            tokens = list(pool.map(lambda body: send(url, body), requests_))
    return time.perf_counter() - started, sum(tokens)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    count = args.requests
    rows: list[dict[str, float]] = []
    with checkpoint(args) as model, running_server(model, args) as url:
        timed(url, bodies(0, args.clients, args.max_tokens), args.clients)  # warm-up
        for run in range(args.runs):
            # Fresh images for each half, so that neither finds the other's features cached.
            first = args.clients + 2 * run * count
            seq_s, seq_tokens = timed(url, bodies(first, count, args.max_tokens), 1)
            before = requests.get(f"{url}/health", timeout=30).json()
            con_s, con_tokens = timed(url, bodies(first + count, count, args.max_tokens), args.clients)
            after = requests.get(f"{url}/health", timeout=30).json()
            rows.append(
                {
                    "sequential_rps": count / seq_s,
                    "concurrent_rps": count / con_s,
                    "sequential_tps": seq_tokens / seq_s,
                    "concurrent_tps": con_tokens / con_s,
                    "speedup": seq_s / con_s,
                    "mean_batch": count / max(1, after["batches_run"] - before["batches_run"]),
                }
            )
            print(
                f"run {run + 1}/{args.runs}: speedup {rows[-1]['speedup']:.2f}x", file=sys.stderr, flush=True
            )
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    low = {key: min(row[key] for row in rows) for key in rows[0]}
    high = {key: max(row[key] for row in rows) for key in rows[0]}
    what = args.model or f"random weights, size {args.size}"
    print(
        f"Server throughput: {what}, {count} requests, {args.max_tokens} tokens each, {args.clients} "
        f"clients, num_crops {args.num_crops}, median of {args.runs} runs (min-max)\n"
    )
    print(f"Mean batch of the concurrent requests: {median['mean_batch']:.1f}\n")
    print("| | sequential | concurrent | ratio |\n|---|---|---|---|")
    for label, key in (("requests/s", "rps"), ("completion tokens/s", "tps")):
        seq, con = f"sequential_{key}", f"concurrent_{key}"
        print(f"| {label} | {median[seq]:.2f} ({low[seq]:.2f}-{high[seq]:.2f}) | "
              f"{median[con]:.2f} ({low[con]:.2f}-{high[con]:.2f}) | {median['speedup']:.2f}x |")  # fmt: skip
    command = "python -m phi3vision.server.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(json.dumps({"command": command.strip(), "median": median, "min": low, "max": high, "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
