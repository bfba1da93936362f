"""``phi3vision batch``: the command-line face of ``phi3vision.jobs``.

Everything that can be wrong with the inputs or the output file is checked before the model
is loaded, so a typo costs a second and not a model load. Exit codes: 0 every item done (or
skipped), 1 some items failed (they are in the output with their error) or an error stopped
the job, 130 interrupted with Ctrl-C, 143 stopped by SIGTERM; the summary goes to stderr in
every case.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from .common import load_model, note, peak_memory, verbose

if TYPE_CHECKING:
    from ..model import VisionModel
    from ..ray import RayExecutor

_MAX_LISTED_FAILURES = 10


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a service manager or ``kill`` stopping the job)."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM stops the job as Ctrl-C does (between two lines, with the
    summary), instead of ending the process on the spot. Signals reach the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _model_or_executor(args: argparse.Namespace) -> VisionModel | RayExecutor:
    """The model loaded here, or, with ``--executor ray``, Ray actors that each load it."""
    if args.executor == "local":
        if args.ray_address is not None:
            args.parser.error("--ray-address needs --executor ray")
        return load_model(args)
    from ..ray import RayExecutor

    return RayExecutor(
        args.model,
        address=args.ray_address,
        device=args.device,
        dtype=args.dtype,
        num_crops=args.num_crops,
        quantization=args.quantization,
        load_options={"attn_implementation": args.attn, "revision": args.revision},
        concurrency=args.ray_actors,
        num_gpus=args.ray_gpus,
        num_cpus=args.ray_cpus,
    )


def run_batch_command(args: argparse.Namespace) -> int:
    from ..errors import OptionsError
    from ..jobs import BatchJob, BatchSettings, batch_settings, check_output, collect_items
    from ..model import VisionModel

    # The command's options carry the settings' names, so the mapping cannot drift.
    try:
        settings = batch_settings(**{name: getattr(args, name) for name in BatchSettings.model_fields})
    except OptionsError as exc:
        args.parser.error(str(exc))
    items = collect_items(args.inputs, recursive=args.recursive)
    missing = settings.item_without_question(items)
    if missing is not None:
        args.parser.error(
            f"ask needs -q QUESTION or a 'question' for every item; {missing.key} ({missing.origin}) has none"
        )
    check_output(args.out, resume=settings.resume, overwrite=settings.overwrite)
    with _model_or_executor(args) as model:
        # Peak memory is this process's; with Ray the model runs in the actors' processes.
        device = model.info.device if isinstance(model, VisionModel) else None
        job = BatchJob.from_settings(model, settings, items, args.out)
        try:
            with _sigterm_interrupts():
                summary = job.run()
        except KeyboardInterrupt as exc:
            sys.stderr.write("\n")
            note(f"phi3vision: {job.summary.describe()}", "phi3vision: run again with --resume to continue")
            return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    for key, message in job.failures[:_MAX_LISTED_FAILURES]:
        note(f"phi3vision: failed: {key}: {message}")
    if len(job.failures) > _MAX_LISTED_FAILURES:
        note(f"phi3vision: ... and {len(job.failures) - _MAX_LISTED_FAILURES} more failures (see {args.out})")
    note(f"phi3vision: {summary.describe()}")
    if verbose(args) and device is not None:
        note(f"phi3vision: {peak_memory(device)}")
    return 0 if summary.ok else 1
