"""Section ``batch``: ``generate_batch`` throughput per batch size."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .harness import Bench, Section
from .measure import repeat, stat
from .tables import spread, table

if TYPE_CHECKING:
    from ..prompt import Prompt


def section_batch(bench: Bench) -> dict[str, Any]:
    """``generate_batch`` throughput: every row its own image (distinct pixels, so the feature
    cache cannot help) and ``max_new_tokens`` greedy tokens, no early stop."""
    vm = bench.model()
    n = bench.settings.max_new_tokens
    rows = []
    for batch_size in bench.settings.batch_sizes:
        bench.log(f"batch size {batch_size}")
        prompts = [bench.prompt(seed_offset=1 + row) for row in range(batch_size)]

        def once(prompts: list[Prompt] = prompts, batch_size: int = batch_size) -> tuple[float, list[Any]]:
            vm.clear_caches()
            return bench.clock.time(
                lambda: vm.generate_batch(prompts, batch_size=batch_size, max_new_tokens=n, stop=[])
            )

        runs = repeat(bench.settings.runs, once)
        errors = [r.error.message for _, results in runs for r in results if r.error is not None]
        if errors:
            raise RuntimeError(f"batch size {batch_size}: {errors[0]}")
        made = [sum(r.usage.completion_tokens for r in results) for _, results in runs]
        decode = [max(r.timings.decode_s for r in results) for _, results in runs]
        rows.append(
            {
                "batch_size": batch_size,
                "prompt_tokens_per_row": runs[0][1][0].usage.prompt_tokens,
                "generated_tokens": min(made),
                "call_s": stat([wall for wall, _ in runs], "s"),
                "tokens_per_s": stat([t / wall for t, (wall, _) in zip(made, runs, strict=True)], "tokens/s"),
                "decode_tokens_per_s": stat(
                    [(t - batch_size) / d for t, d in zip(made, decode, strict=True) if d > 0], "tokens/s"
                ),
                "time_to_first_token_s": stat(
                    [results[0].timings.time_to_first_token_s for _, results in runs], "s"
                ),
            }
        )
    return {**bench.workload(), "max_new_tokens": n, "rows": rows}


def _md_batch(body: dict[str, Any]) -> str:
    rows = [
        [
            str(r["batch_size"]),
            str(r["prompt_tokens_per_row"]),
            str(r["generated_tokens"]),
            spread(r["call_s"], 1000),
            spread(r["tokens_per_s"]),
            spread(r["decode_tokens_per_s"]),
        ]
        for r in body["rows"]
    ]
    return (
        table(
            [
                "batch size",
                "prompt tokens/row",
                "tokens generated",
                "call ms",
                "tokens/s, all rows (whole call)",
                "decode tokens/s, all rows",
            ],
            rows,
        )
        + f"\n\nEach row: its own {body['image']} image at num_crops {body['num_crops']}, "
        f"{body['max_new_tokens']} new tokens."
    )


SECTION = Section("batch", "Batch throughput (generate_batch)", section_batch, _md_batch)
