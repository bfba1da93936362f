"""Section ``chat``: a second turn about the same image, with and without reuse."""

from __future__ import annotations

import statistics
from typing import Any

from .decoding import generate_wall
from .harness import Bench, Section
from .measure import ratio, repeat, stat
from .tables import spread, table, times


def section_chat(bench: Bench) -> dict[str, Any]:
    """A chat's second turn about the same image, three ways in each run: turn 1 (cold), turn 2
    right after it with reuse (cached image features, the turn-1 KV cache), and turn 2 on a model
    loaded with ``feature_cache_size=0, reuse_prefix=False`` (everything recomputed)."""
    from ..prompt import Prompt

    vm = bench.model()
    bench.log("loading a second model without caches")
    cold = bench.load(feature_cache_size=0, reuse_prefix=False)
    turn1 = Prompt().user("What is in this picture?", images=[bench.image()])
    turn2 = turn1.assistant("A square of coloured noise.").user("Which colour is most common?")

    def once() -> tuple[float, float, float, int, Any, Any]:
        t1, first = generate_wall(bench, vm, turn1, 1)  # clears the caches first
        before = vm.prefix_reused_tokens
        t2, second = bench.clock.time(lambda: vm.generate(turn2, max_new_tokens=1, stop=[]))
        reused = vm.prefix_reused_tokens - before
        t2_cold, _ = bench.clock.time(lambda: cold.generate(turn2, max_new_tokens=1, stop=[]))
        return t1, t2, t2_cold, reused, first, second

    try:
        runs = repeat(bench.settings.runs, once)
    finally:
        cold.close()
    t1 = [run[0] for run in runs]
    t2 = [run[1] for run in runs]
    t2_cold = [run[2] for run in runs]
    return {
        **bench.workload(),
        "turn1_prompt_tokens": runs[0][4].usage.prompt_tokens,
        "turn2_prompt_tokens": runs[0][5].usage.prompt_tokens,
        "turn2_reused_tokens": min(run[3] for run in runs),
        "turn1_time_to_first_token_s": stat(t1, "s"),
        "turn2_reuse_time_to_first_token_s": stat(t2, "s"),
        "turn2_reuse_preprocess_s": stat([run[5].timings.preprocess_s for run in runs], "s"),
        "turn2_cold_time_to_first_token_s": stat(t2_cold, "s"),
        "turn1_over_turn2": ratio(statistics.median(t1), statistics.median(t2)),
        "turn2_cold_over_reuse": ratio(statistics.median(t2_cold), statistics.median(t2)),
    }


def _md_chat(body: dict[str, Any]) -> str:
    rows = [
        [
            "turn 1 (cold)",
            str(body["turn1_prompt_tokens"]),
            "0",
            spread(body["turn1_time_to_first_token_s"], 1000),
        ],
        [
            "turn 2, with reuse",
            str(body["turn2_prompt_tokens"]),
            str(body["turn2_reused_tokens"]),
            spread(body["turn2_reuse_time_to_first_token_s"], 1000),
        ],
        [
            "turn 2, feature_cache_size=0, reuse_prefix=False",
            str(body["turn2_prompt_tokens"]),
            "0",
            spread(body["turn2_cold_time_to_first_token_s"], 1000),
        ],
    ]
    return (
        table(["call", "prompt tokens", "reused tokens", "time to first token ms"], rows)
        + f"\n\nTurn 2 with reuse is {times(body['turn2_cold_over_reuse'])} faster than turn 2 without "
        f"caches, {times(body['turn1_over_turn2'])} faster than turn 1. Of its time to first token, "
        f"{spread(body['turn2_reuse_preprocess_s'], 1000)} ms is preprocessing (the call's own "
        "preprocess_s: reading the image, its content fingerprint and tokenising; the HD transform "
        "is skipped because the image's features are cached)."
    )


SECTION = Section("chat", "Chat: second turn about the same image", section_chat, _md_chat)
