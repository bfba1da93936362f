"""``phi3vision batch``: the command-line face of ``phi3vision.jobs``.

Everything that can be wrong with the inputs or the output file is checked before the model
is loaded, so a typo costs a second and not a model load. Exit codes: 0 every item done (or
skipped), 1 some items failed (they are in the output with their error) or an error stopped
the job, 130 interrupted; the summary goes to stderr in every case.
"""

from __future__ import annotations

import argparse
import sys

from .common import load_model, note

_MAX_LISTED_FAILURES = 10


def run_batch_command(args: argparse.Namespace) -> int:
    from ..jobs import BatchJob, Task, check_output, collect_items
    from ..tasks import get_task

    task = get_task(args.task).name
    # jobs still spells extract_text "ocr" in its own list (until it reads the task registry).
    job_tasks: dict[str, Task] = {"describe": "describe", "extract_text": "ocr", "ask": "ask"}
    job_task = job_tasks[task]

    items = collect_items(args.inputs, recursive=args.recursive)
    if task == "ask" and args.question is None:
        missing = next((item for item in items if item.question is None), None)
        if missing is not None:
            args.parser.error(
                f"ask needs -q QUESTION or a 'question' for every item; "
                f"{missing.key} ({missing.origin}) has none"
            )
    resume = args.resume or args.retry_failed
    check_output(args.out, resume=resume, overwrite=args.overwrite)
    with load_model(args) as vm:
        job = BatchJob(
            vm,
            job_task,
            items,
            args.out,
            question=args.question,
            batch_size=args.batch_size,
            options=args.options,
            resume=resume,
            overwrite=args.overwrite,
            retry_failed=args.retry_failed,
            progress=args.progress,
        )
        try:
            summary = job.run()
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            note(f"phi3vision: {job.summary.describe()}", "phi3vision: run again with --resume to continue")
            return 130
    for key, message in job.failures[:_MAX_LISTED_FAILURES]:
        note(f"phi3vision: failed: {key}: {message}")
    if len(job.failures) > _MAX_LISTED_FAILURES:
        note(f"phi3vision: ... and {len(job.failures) - _MAX_LISTED_FAILURES} more failures (see {args.out})")
    note(f"phi3vision: {summary.describe()}")
    return 0 if summary.ok else 1
