"""describe, extract_text (ocr), compare and ask: one model call per answer, text streamed or
JSON lines.

Text mode streams (``VisionModel.stream``) the task's own prompt (phi3vision.tasks) so that a
person sees the answer as it is made; JSON mode calls the task helpers so that each line is the
helper's own result type (``Description``, ``TextExtraction``, ``Comparison``, ``Answer``).
"""

from __future__ import annotations

import argparse

from ..errors import Phi3VisionError
from ..tasks import TASKS, TaskPrompts, get_task
from .common import (
    debug_flag,
    image_inputs,
    load_model,
    print_header,
    print_json,
    print_stream,
    report,
)


def run_per_image(args: argparse.Namespace) -> int:
    """describe and extract_text (ocr): one answer per image. A failing image is reported
    (and, with --json, printed as an error result so that line N still belongs to image N);
    the others still run; exit 1."""
    from ..jobs import failed_result

    task = get_task(args.task)
    inputs = image_inputs(args.images)
    failures = 0
    with load_model(args) as vm:
        helper = getattr(vm, task.name)  # vm.describe or vm.extract_text: the task's result type
        for label, source in inputs:
            if len(inputs) > 1 and not args.json:
                print_header(label)
            try:
                if args.json:
                    print_json(helper(source, options=args.options))
                else:
                    print_stream(vm.stream(task.prompt(vm.task_prompts, [source]), options=args.options))
            except Phi3VisionError as exc:
                failures += 1
                if args.json:
                    print_json(failed_result(exc, vm.model_ref))
                report(exc, debug_flag(args))
    return 1 if failures else 0


def run_compare(args: argparse.Namespace) -> int:
    sources = [source for _, source in image_inputs(args.images)]
    with load_model(args) as vm:
        if args.json:
            print_json(vm.compare(*sources, options=args.options))
        else:
            prompt = TASKS["compare"].prompt(vm.task_prompts, sources)
            print_stream(vm.stream(prompt, options=args.options))
    return 0


def run_ask(args: argparse.Namespace) -> int:
    sources = [source for _, source in image_inputs(args.images)]
    # Checked before loading: the library would raise the same PromptError, only later.
    prompt = TASKS["ask"].prompt(TaskPrompts(), sources, instruction=args.question, system=args.system)
    with load_model(args) as vm:
        if args.json:
            print_json(vm.ask(args.question, sources, system=args.system, options=args.options))
        else:
            print_stream(vm.stream(prompt, options=args.options))
    return 0
