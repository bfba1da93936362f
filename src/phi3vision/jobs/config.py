"""A job's settings: the task and every knob of a batch job, in one validated, frozen type.

``BatchJob``, ``run_batch`` and ``phi3vision batch`` all go through ``BatchSettings``, so the
names, the defaults and the rules between them (resume or overwrite, ``retry_failed`` implies
``resume``, the ask task needs a question) are written here once. Add a setting here, and the
job, ``run_batch`` and the command line's mapping (by argument name) pick it up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import OptionsError
from ..options import GenerationOptions, resolve_options
from ..tasks import TASKS as TASK_REGISTRY
from ..tasks import get_task
from .items import BatchItem

__all__ = ["TASKS", "BatchKeywords", "BatchSettings", "Task", "batch_settings"]

Task = Literal["describe", "extract_text", "ask", "extract"]
TASKS: tuple[Task, ...] = cast(
    "tuple[Task, ...]", tuple(name for name, spec in TASK_REGISTRY.items() if spec.batch)
)
"""The tasks a batch job runs: the registry's (phi3vision.tasks) with ``batch=True``. A task's
old spelling ("ocr") is accepted and becomes its name."""


class BatchSettings(BaseModel):
    """How a batch job runs. ``question`` is the ask task's question for every item (an item's
    own question wins); ``batch_size`` the images per model call; ``options`` the generation
    options (the extract task's schema is ``options.json_schema``); ``resume`` continues an
    existing output, ``overwrite`` replaces it, and
    ``retry_failed`` (which implies ``resume``) runs the items recorded as failed again;
    ``progress`` shows a progress bar on stderr (``None``: when stderr is a terminal).

    Build one with ``batch_settings(...)`` to get an ``OptionsError`` for bad values.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task
    question: str | None = Field(default=None, strict=True)
    batch_size: int = Field(default=4, strict=True, ge=1)
    options: GenerationOptions = Field(default_factory=GenerationOptions)
    resume: bool = Field(default=False, strict=True)
    overwrite: bool = Field(default=False, strict=True)
    retry_failed: bool = Field(default=False, strict=True)
    progress: bool | None = Field(default=None, strict=True)

    @field_validator("task", mode="before")
    @classmethod
    def _known_task(cls, task: object) -> object:
        name = get_task(task).name if isinstance(task, str) and task else task
        if name not in TASKS:
            raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        return name

    @field_validator("question")
    @classmethod
    def _question_has_text(cls, question: str | None) -> str | None:
        if question is not None and not question.strip():
            raise ValueError("question must be a non-empty string")
        return question

    @field_validator("options", mode="before")
    @classmethod
    def _resolve_options(cls, options: object) -> GenerationOptions:
        return resolve_options(cast("GenerationOptions | Mapping[str, Any] | None", options), {})

    @model_validator(mode="before")
    @classmethod
    def _retry_implies_resume(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("retry_failed") is True:
            return {**data, "resume": True}
        return data

    @model_validator(mode="after")
    def _extract_has_a_schema(self) -> BatchSettings:
        if self.task == "extract" and self.options.json_schema is None:
            raise ValueError("the extract task needs options with a json_schema (the objects' schema)")
        return self

    @model_validator(mode="after")
    def _resume_or_overwrite(self) -> BatchSettings:
        if self.overwrite and self.retry_failed:
            raise ValueError("retry_failed continues the file; it cannot go with overwrite")
        if self.overwrite and self.resume:
            raise ValueError("resume and overwrite exclude each other: continue the file or replace it")
        return self

    def question_for(self, item: BatchItem) -> str | None:
        """The question asked about ``item``: its own, else the job's; ``None`` for other tasks."""
        if self.task != "ask":
            return None
        return item.question if item.question is not None else self.question

    def item_without_question(self, items: Sequence[BatchItem]) -> BatchItem | None:
        """The first item the ask task has no question for, if any."""
        if self.task != "ask":
            return None
        return next((item for item in items if self.question_for(item) is None), None)

    def check_items(self, items: Sequence[BatchItem]) -> None:
        """Refuse items this job cannot run (an ask without a question), naming the first."""
        missing = self.item_without_question(items)
        if missing is not None:
            raise OptionsError(
                f"the ask task needs a question: give one for all items (-q) or a 'question' "
                f"for each item; {missing.key!r} ({missing.origin}) has none"
            )

    def keywords(self) -> BatchKeywords:
        """The settings but the task, as ``BatchJob``'s and ``run_batch``'s keyword arguments."""
        return cast(BatchKeywords, {name: getattr(self, name) for name in BatchKeywords.__annotations__})


class BatchKeywords(TypedDict, total=False):
    """``BatchSettings``' fields but the task, typed for ``**settings`` keyword arguments; see
    ``BatchSettings`` for their meaning and defaults (a test keeps the two the same)."""

    question: str | None
    batch_size: int
    options: GenerationOptions | Mapping[str, Any] | None
    resume: bool
    overwrite: bool
    retry_failed: bool
    progress: bool | None


def batch_settings(task: str, **settings: Any) -> BatchSettings:
    """``BatchSettings(task=task, **settings)``, with bad values as one ``OptionsError``."""
    if "options" in settings:  # its own, more precise error, as everywhere else in the library
        settings["options"] = resolve_options(settings["options"], {})
    try:
        return BatchSettings(task=cast(Task, task), **settings)
    except ValidationError as exc:
        raise OptionsError(f"invalid batch settings: {_problems(exc)}") from exc


def _problems(exc: ValidationError) -> str:
    """Each problem as "field: message"; our own rules' messages already say what is wrong."""
    problems = []
    for error in exc.errors():
        if error["type"] == "value_error":
            problems.append(str(error["ctx"]["error"]))
        else:
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)
