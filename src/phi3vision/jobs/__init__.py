"""Batch jobs: one task (describe, ocr or ask) over many images, results to a JSON Lines file.

A job over thousands of images runs for hours, so it must survive being stopped. That is why
results go to a file rather than a list: every finished item is written as one whole line and
forced to disk at once, so an interrupted job (Ctrl-C, a crash, even SIGKILL) leaves a valid
file, at worst with a partial last line, and ``resume=True`` repairs it and carries on without
redoing or losing any finished item.

    >>> from phi3vision import VisionModel
    >>> from phi3vision.jobs import collect_items, run_batch
    >>> vm = VisionModel.from_pretrained()                               # doctest: +SKIP
    >>> items = collect_items("photos/")                                 # doctest: +SKIP
    >>> run_batch(vm, "describe", items, "results.jsonl", resume=True)   # doctest: +SKIP

The package follows the flow of a job:

- ``items``: what a job runs over (``BatchItem``), from folders, globs and manifests;
- ``config``: the job's settings (``BatchSettings``), validated once for every caller;
- ``results_file``: the crash-safe, locked JSON Lines output (``check_output``);
- ``job``: ``BatchJob`` and ``run_batch``, the output line (``result_row``) and ``BatchSummary``.

``phi3vision batch`` on the command line is a thin layer over this package.
"""

from __future__ import annotations

from .config import TASKS, BatchKeywords, BatchSettings, Task, batch_settings
from .items import IMAGE_EXTENSIONS, MANIFEST_SUFFIXES, BatchItem, collect_items, find_images, read_manifest
from .job import (
    RESULT_FIELDS,
    ROW_FIELDS,
    BatchJob,
    BatchSummary,
    JobExecutor,
    failed_result,
    result_row,
    run_batch,
)
from .results_file import check_output

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_SUFFIXES",
    "RESULT_FIELDS",
    "ROW_FIELDS",
    "TASKS",
    "BatchItem",
    "BatchJob",
    "BatchKeywords",
    "BatchSettings",
    "BatchSummary",
    "JobExecutor",
    "Task",
    "batch_settings",
    "check_output",
    "collect_items",
    "failed_result",
    "find_images",
    "read_manifest",
    "result_row",
    "run_batch",
]
