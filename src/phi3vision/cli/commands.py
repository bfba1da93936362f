"""describe, ocr, compare, ask and extract: one model call per answer, text streamed or JSON lines.

Text mode streams (``VisionModel.stream``) so that a person sees the answer as it is made; JSON
mode calls the task helpers so that each line is the helper's own result type
(``Description``, ``TextExtraction``, ``Comparison``, ``Answer``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Literal

from ..errors import Phi3VisionError
from .common import (
    debug_flag,
    image_inputs,
    load_model,
    print_header,
    print_json,
    print_stream,
    report,
    report_run,
)

if TYPE_CHECKING:
    from ..results import Generation


def run_describe(args: argparse.Namespace) -> int:
    return _one_per_image(args, "describe")


def run_ocr(args: argparse.Namespace) -> int:
    return _one_per_image(args, "ocr")


def _one_per_image(args: argparse.Namespace, task: Literal["describe", "ocr"]) -> int:
    """One answer per image. A failing image is reported (and, with --json, printed as an
    error result so that line N still belongs to image N); the others still run; exit 1."""
    from ..jobs import failed_result
    from ..prompt import Prompt

    inputs = image_inputs(args.images)
    failures = 0
    with load_model(args) as vm:
        instruction = vm.task_prompts.describe if task == "describe" else vm.task_prompts.extract_text
        for label, source in inputs:
            if len(inputs) > 1 and not args.json:
                print_header(label)
            try:
                if args.json:
                    result: Any = (
                        vm.describe(source, options=args.options)
                        if task == "describe"
                        else vm.extract_text(source, options=args.options)
                    )
                    print_json(result)
                else:
                    result = print_stream(
                        vm.stream(Prompt().user(instruction, images=[source]), options=args.options)
                    )
                report_run(args, result, vm.info.device)
            except Phi3VisionError as exc:
                failures += 1
                if args.json:
                    print_json(failed_result(exc, vm.model_ref))
                report(exc, debug_flag(args))
    return 1 if failures else 0


def run_compare(args: argparse.Namespace) -> int:
    from ..prompt import Prompt

    sources = [source for _, source in image_inputs(args.images)]
    with load_model(args) as vm:
        result: Generation
        if args.json:
            result = vm.compare(*sources, options=args.options)
            print_json(result)
        else:
            prompt = Prompt().user(vm.task_prompts.compare, images=sources)
            result = print_stream(vm.stream(prompt, options=args.options))
        report_run(args, result, vm.info.device)
    return 0


def run_ask(args: argparse.Namespace) -> int:
    from ..prompt import Prompt

    sources = [source for _, source in image_inputs(args.images)]
    # Checked before loading: the library would raise the same PromptError, only later.
    prompt = Prompt(system=args.system).user(args.question, images=sources)
    with load_model(args) as vm:
        result: Generation
        if args.json:
            result = vm.ask(args.question, sources, system=args.system, options=args.options)
            print_json(result)
        else:
            result = print_stream(vm.stream(prompt, options=args.options))
        report_run(args, result, vm.info.device)
    return 0


def run_extract(args: argparse.Namespace) -> int:
    """One JSON object per image on stdout, constrained by the schema. A failing image prints
    ``null`` (line N stays image N's), is reported on stderr, and the others still run; exit 1."""
    import json

    schema = args.options.json_schema
    failures = 0
    with load_model(args) as vm:
        for _label, source in image_inputs(args.images):
            try:
                result = vm.extract_result(source, schema, options=args.options)
                print(json.dumps(result.value, ensure_ascii=False), flush=True)
            except Phi3VisionError as exc:
                failures += 1
                print("null", flush=True)
                report(exc, debug_flag(args))
    return 1 if failures else 0
