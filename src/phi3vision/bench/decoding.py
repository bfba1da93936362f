"""Sections ``prefill`` (time to first token) and ``decode`` (tokens/s at batch 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .harness import Bench, Section
from .measure import repeat, stat
from .tables import spread, table

if TYPE_CHECKING:
    from ..model import VisionModel
    from ..prompt import Prompt


def generate_wall(bench: Bench, vm: VisionModel, prompt: Prompt, max_new_tokens: int) -> tuple[float, Any]:
    """Wall-clock seconds of one ``generate`` from a cold state (no cached features or prefix).
    With ``max_new_tokens=1`` that is the time to first token: the call returns as soon as the
    first token is on the host."""
    vm.clear_caches()
    return bench.clock.time(lambda: vm.generate(prompt, max_new_tokens=max_new_tokens, stop=[]))


def section_prefill(bench: Bench) -> dict[str, Any]:
    """Time to first token for one image: preprocessing, vision encoder, prefill, one token."""
    vm = bench.model()
    prompt = bench.prompt()
    runs = repeat(bench.settings.runs, lambda: generate_wall(bench, vm, prompt, 1))
    first = runs[0][1]
    return {
        **bench.workload(),
        "prompt_tokens": first.usage.prompt_tokens,
        "image_tokens": first.usage.image_tokens,
        "time_to_first_token_s": stat([wall for wall, _ in runs], "s"),
        "preprocess_s": stat([r.timings.preprocess_s for _, r in runs], "s"),
        "reported_time_to_first_token_s": stat([r.timings.time_to_first_token_s for _, r in runs], "s"),
    }


def decode_runs(bench: Bench, vm: VisionModel, prompt: Prompt, warmed_up: bool = False) -> dict[str, Any]:
    """Decode speed at batch 1, two ways from the same runs.

    ``tokens_per_s``: ``(n - 1) / decode_s`` of each call, where the call times its own decode
    from the first token on the host to the last. ``wall_check_tokens_per_s``: ``(n - 1)`` over
    the wall-clock difference between an ``n``-token call and a 1-token call of the same run,
    which depends on nothing the library reports (a cross-check of the first).
    """
    n = bench.settings.max_new_tokens

    def once() -> tuple[float, float, Any]:
        wall_n, result = generate_wall(bench, vm, prompt, n)
        wall_1, _ = generate_wall(bench, vm, prompt, 1)
        return wall_n, wall_1, result

    runs = [once() for _ in range(bench.settings.runs)] if warmed_up else repeat(bench.settings.runs, once)
    tokens = [r.usage.completion_tokens for _, _, r in runs]
    speeds = [
        (t - 1) / r.timings.decode_s
        for t, (_, _, r) in zip(tokens, runs, strict=True)
        if r.timings.decode_s > 0
    ]
    checks = [(n - 1) / (wall_n - wall_1) for wall_n, wall_1, _ in runs if wall_n > wall_1]
    return {
        "max_new_tokens": n,
        "completion_tokens": min(tokens),
        "prompt_tokens": runs[0][2].usage.prompt_tokens,
        "tokens_per_s": stat(speeds, "tokens/s") if speeds else None,
        "ms_per_token": stat([1000 / s for s in speeds], "ms") if speeds else None,
        "wall_check_tokens_per_s": stat(checks, "tokens/s") if checks else None,
        "time_to_first_token_s": stat([wall_1 for _, wall_1, _ in runs], "s"),
        "call_s": stat([wall_n for wall_n, _, _ in runs], "s"),
    }


def section_decode(bench: Bench) -> dict[str, Any]:
    """Greedy decoding at batch 1, the default path (dynamic KV cache, eager PyTorch)."""
    if bench.settings.max_new_tokens < 2:
        raise ValueError("decode needs --max-new-tokens of at least 2")
    vm = bench.model()
    return {**bench.workload(), **decode_runs(bench, vm, bench.prompt())}


def _md_prefill(body: dict[str, Any]) -> str:
    return table(
        ["image", "num_crops", "prompt tokens", "time to first token ms", "of which preprocessing ms"],
        [
            [
                body["image"],
                str(body["num_crops"]),
                str(body["prompt_tokens"]),
                spread(body["time_to_first_token_s"], 1000),
                spread(body["preprocess_s"], 1000),
            ]
        ],
    )


def decode_row(label: str, body: dict[str, Any]) -> list[str]:
    return [
        label,
        str(body["max_new_tokens"]),
        spread(body["tokens_per_s"]),
        spread(body["ms_per_token"]),
        spread(body["wall_check_tokens_per_s"]),
        spread(body["time_to_first_token_s"], 1000),
    ]


DECODE_HEADERS = ["path", "new tokens", "decode tokens/s", "ms/token", "wall-clock check tokens/s", "TTFT ms"]


def _md_decode(body: dict[str, Any]) -> str:
    return table(DECODE_HEADERS, [decode_row("default", body)]) + (
        f"\n\nOne image ({body['image']}, num_crops {body['num_crops']}), "
        f"{body['prompt_tokens']} prompt tokens, batch 1, greedy, no early stop."
    )


PREFILL = Section("prefill", "Time to first token (one image)", section_prefill, _md_prefill)
DECODE = Section("decode", "Decode, batch 1", section_decode, _md_decode)
