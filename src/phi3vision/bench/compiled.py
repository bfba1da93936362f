"""Section ``compile``: decoding at batch 1 with ``compile=True``, against the default path."""

from __future__ import annotations

from typing import Any

from .decoding import DECODE_HEADERS, decode_row, decode_runs, generate_wall
from .harness import Bench, Section
from .measure import ratio
from .tables import num, table, times


def section_compile(bench: Bench) -> dict[str, Any]:
    """Greedy decoding at batch 1 with ``compile=True`` (static KV cache, compiled step, CUDA
    graphs on GPU). The first call compiles; its extra time is reported on its own."""
    if bench.settings.max_new_tokens < 2:
        raise ValueError("compile needs --max-new-tokens of at least 2")
    bench.close_model()  # never two copies of the weights at once
    bench.log("loading the model with compile=True")
    load_s, vm = bench.clock.time(lambda: bench.load(compile=True))
    try:
        prompt = bench.prompt()
        bench.log("first compiled call (compiles)")
        first_s, _ = generate_wall(bench, vm, prompt, bench.settings.max_new_tokens)
        bench.log("compiled runs")
        measured = decode_runs(bench, vm, prompt, warmed_up=True)
    finally:
        vm.close()
    steady_call = measured["call_s"]["median"]
    default = bench.results.get("decode", {}).get("tokens_per_s")
    compiled = measured["tokens_per_s"]
    return {
        **bench.workload(),
        **measured,
        "load_s": load_s,
        "first_call_s": first_s,
        "compile_s": max(0.0, first_s - steady_call),
        "speedup_vs_default": (
            ratio(compiled["median"], default["median"])
            if compiled is not None and default is not None
            else None
        ),
    }


def _md_compile(body: dict[str, Any]) -> str:
    return (
        table(DECODE_HEADERS, [decode_row("compile=True", body)])
        + f"\n\nLoad {num(body['load_s'])} s; first call {num(body['first_call_s'])} s, of which about "
        f"{num(body['compile_s'])} s compiling. Speed-up over the default path in this run: "
        f"{times(body['speedup_vs_default'])}."
    )


SECTION = Section("compile", "Decode, batch 1, compile=True", section_compile, _md_compile)
