"""What constrained decoding costs: ``python -m phi3vision.bench_constraints``.

Measured on the machine it runs on (needs the ``grammar`` extra):

- the backend's import time (a fresh interpreter per run);
- compiling the tokenizer info, once per model (the vocabulary at the model's width);
- compiling each schema of ``SCHEMAS``, once per (schema, tokenizer);
- the mask per token: filling and applying one row's grammar mask to ``(1, 32064)`` logits and
  advancing its matcher, in isolation, at batch 1 and batch 8;
- decoding on the tiny random-weight checkpoint, free and constrained, the same number of
  tokens each (a regex that cannot finish within the budget): ms per token and their ratio.

Every figure is the median of ``--runs`` runs after one warm-up, shown with its min and max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMAS: dict[str, dict[str, Any]] = {
    "flat (3 fields)": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 40},
            "year": {"type": "integer", "minimum": 1800, "maximum": 2100},
            "in_print": {"type": "boolean"},
        },
        "required": ["title", "year", "in_print"],
    },
    "nested (lists, enums, floats)": {
        "type": "object",
        "properties": {
            "currency": {"enum": ["EUR", "USD", "GBP"]},
            "items": {
                "type": "array",
                "maxItems": 10,
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                        "price": {"type": "number", "minimum": 0, "maximum": 10000},
                    },
                    "required": ["sku", "quantity", "price"],
                },
            },
            "total": {"type": "number", "minimum": 0, "maximum": 1000000},
        },
        "required": ["currency", "items", "total"],
    },
}


def _timed(function: Callable[[], Any], runs: int) -> list[float]:
    function()  # warm-up
    values = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        values.append(time.perf_counter() - started)
    return values


def _summary(values: list[float], scale: float = 1000.0) -> dict[str, Any]:
    return {
        "median": statistics.median(values) * scale,
        "min": min(values) * scale,
        "max": max(values) * scale,
        "values": [v * scale for v in values],
    }


def _import_time() -> float:
    code = "import time; t = time.perf_counter(); import xgrammar; print(time.perf_counter() - t)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(output.stdout.strip().splitlines()[-1])


def run(runs: int, tokens: int) -> dict[str, Any]:
    import torch

    from .constraints import CONSTRAINED_STOP_TOKEN_IDS, Constraint, require_backend
    from .constraints.masking import Grammars, RowMatchers
    from .model import VisionModel
    from .options import GenerationOptions
    from .testing.checkpoint import tiny_checkpoint
    from .testing.fake import packaged_tokenizer

    require_backend("python -m phi3vision.bench_constraints")
    report: dict[str, Any] = {"runs": runs, "tokens": tokens, "torch_threads": torch.get_num_threads()}
    _import_time()  # warm-up: the files are in the page cache afterwards
    report["import_ms"] = _summary([_import_time() for _ in range(runs)])

    tokenizer = packaged_tokenizer()
    width = 32064
    report["tokenizer_info_ms"] = _summary(_timed(lambda: Grammars(tokenizer, width), runs))
    grammars = Grammars(tokenizer, width)
    compiled: dict[str, Any] = {}
    for name, schema in SCHEMAS.items():
        constraint = Constraint("json_schema", json.dumps(schema))
        # A fresh compiler each run: the compile, not the cache, is measured.
        values = []
        for _ in range(runs + 1):
            fresh = Grammars(tokenizer, width)
            started = time.perf_counter()
            fresh.compile(constraint)
            values.append(time.perf_counter() - started)
        compiled[name] = _summary(values[1:])
    report["schema_compile_ms"] = compiled

    constraint = Constraint("json_schema", json.dumps(SCHEMAS["nested (lists, enums, floats)"]))
    mask: dict[str, Any] = {}
    for batch in (1, 8):
        logits = torch.randn(batch, width)

        def steps(batch: int = batch, logits: torch.Tensor = logits) -> None:
            matchers = RowMatchers(grammars, constraint, batch, CONSTRAINED_STOP_TOKEN_IDS)
            for _ in range(tokens):
                chosen = matchers.mask(logits.clone()).argmax(dim=-1)
                if any(matchers.done):
                    break
                matchers.advance(chosen)

        per_token = [value / tokens for value in _timed(steps, runs)]
        mask[f"batch {batch}"] = _summary(per_token)
    report["mask_per_token_ms"] = mask

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = tiny_checkpoint(Path(folder) / "tiny")
        with VisionModel.from_pretrained(checkpoint, device="cpu", dtype="float32") as vm:
            prompt = "<|user|>\nWrite.<|end|>\n<|assistant|>\n"
            free = GenerationOptions(max_new_tokens=tokens, stop=())
            bound = GenerationOptions(max_new_tokens=tokens, regex="[a-z ]{2000}")  # never ends in budget
            decode: dict[str, Any] = {}
            for name, options in (("free", free), ("constrained", bound)):

                def generate(options: GenerationOptions = options) -> None:
                    vm.generate(prompt, options=options)

                decode[name] = _summary([value / tokens for value in _timed(generate, runs)])
            decode["ratio"] = decode["constrained"]["median"] / decode["free"]["median"]
            report["decode_ms_per_token"] = decode
    return report


def markdown(report: dict[str, Any]) -> str:
    def cell(summary: dict[str, Any]) -> str:
        return f"{summary['median']:.3g} ({summary['min']:.3g}–{summary['max']:.3g})"

    lines = ["| what | ms, median (min–max) |", "|---|---|"]
    lines.append(f"| import xgrammar (fresh interpreter) | {cell(report['import_ms'])} |")
    lines.append(f"| tokenizer info, once per model | {cell(report['tokenizer_info_ms'])} |")
    for name, summary in report["schema_compile_ms"].items():
        lines.append(f"| compile schema: {name} | {cell(summary)} |")
    for name, summary in report["mask_per_token_ms"].items():
        lines.append(f"| mask + advance per token, {name} | {cell(summary)} |")
    decode = report["decode_ms_per_token"]
    lines.append(f"| tiny model decode per token, free | {cell(decode['free'])} |")
    lines.append(f"| tiny model decode per token, constrained | {cell(decode['constrained'])} |")
    lines.append(f"| constrained / free (medians) | {decode['ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi3vision.bench_constraints", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="measured runs per figure (default 5)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per decoding run (default 32)")
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    report = run(max(1, args.runs), max(2, args.tokens))
    print(markdown(report))
    print(json.dumps(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
