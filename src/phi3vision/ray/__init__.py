"""Scale a batch job out on Ray Data: ``map_images`` runs a task over a Ray ``Dataset`` with a
pool of actors, each holding one ``VisionModel``.

    >>> import ray
    >>> from phi3vision.ray import map_images
    >>> ds = ray.data.read_binary_files("photos/", include_paths=True)        # doctest: +SKIP
    >>> out = map_images(ds, task="describe", model="microsoft/Phi-3-vision-128k-instruct",
    ...                  concurrency=2, num_gpus=1, max_new_tokens=128)        # doctest: +SKIP
    >>> out.write_json("results/")                                             # doctest: +SKIP

Each output row has the fields of a ``phi3vision batch`` JSON line (``key``, ``input``, ``task``,
``status``, ``text``, ``finish_reason``, ``usage``, ``timings``, ``model``, ``error``; the job's
resume ``fingerprint`` is not part of it) and any columns named in ``keep_columns``. An item
that fails (a broken image, a prompt too long) is a row with ``status="failed"`` and its
``error``; the job goes on.

Needs ``pip install 'phi3vision[ray]'``. Importing this module does not import Ray or torch;
using it without Ray raises ``MissingExtraError``. See docs/scaling.md.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MissingExtraError, OptionsError, Phi3VisionError
from ..jobs import ROW_FIELDS, BatchItem, batch_settings, result_row
from ..options import resolve_options
from ..prompt import Prompt
from ..results import Generation
from ..tasks import TASK_ALIASES, TaskPrompts, get_task

if TYPE_CHECKING:
    from ray.data import Dataset

    from ..model import VisionModel

__all__ = [
    "DEFAULT_NUM_CPUS",
    "IMAGE_COLUMNS",
    "ROW_FIELDS",
    "RayExecutor",
    "VisionPredictor",
    "checkpoint_identity",
    "finished_keys",
    "map_images",
    "task_instruction",
]

IMAGE_COLUMNS: tuple[str, ...] = ("image", "bytes", "path", "url")
"""Columns looked for, in this order, when ``column`` is not given: ``image`` is what
``ray.data.read_images`` makes (a pixel array), ``bytes`` what ``read_binary_files`` makes,
``path`` and ``url`` strings that the image loader reads."""


_KEY_COLUMNS = ("key", "path", "url")

MAP_TASKS = ("describe", "extract_text", "ask")
"""The tasks ``map_images`` runs. The batch job's ``extract`` runs on Ray through
``phi3vision batch extract --executor ray``, which validates the objects on the driver."""

DEFAULT_NUM_CPUS = 0.5
"""CPUs reserved per actor when ``num_cpus`` is not given. A fraction on purpose: actors hold
their CPUs for the whole job, and Ray Data's read tasks need CPUs too; on 2 CPUs, 2 actors at
``num_cpus=1`` leave none for reading, and the job hangs without an error."""


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtraError(
            "phi3vision.ray needs Ray Data, which is not installed: pip install 'phi3vision[ray]'"
        ) from exc
    return ray


def task_instruction(task: str, question: str | None, prompts: TaskPrompts) -> str:
    """The user turn's text for one item: the question for ``ask``, else the task's prompt.

    The one place that maps a task name to a prompt here, so that it can follow the task
    registry when there is one.
    """
    spec = get_task(_check_task(task))
    if spec.name == "ask":
        if question is None:
            raise OptionsError("the ask task needs a question: give question= or a 'question' column")
        return question
    return str(spec.instruction(prompts))


# --------------------------------------------------------------------------------------------
# The actor


class VisionPredictor:
    """A callable class for ``Dataset.map_batches``: loads one ``VisionModel`` when the actor
    starts and runs ``task`` on each batch with ``generate_batch``. A batch is a mapping of
    column names to equally long sequences (numpy arrays or lists) and so is the result, which
    makes it usable from Dask, Spark or plain Python as well (see docs/scaling.md).

    ``column`` names the image column (default: the first of ``IMAGE_COLUMNS`` present);
    ``key`` the column that names each row in the output (default: ``key``, ``path`` or
    ``url``, else the image column when it holds paths or URLs). For ``ask``, a row's own
    non-empty ``question`` column wins over ``question``. ``device``, ``dtype``,
    ``quantization``, ``num_crops`` and ``load_options`` go to ``VisionModel.from_pretrained``;
    ``options`` are ``GenerationOptions`` fields. ``keep_columns`` are copied to the output.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        task: str = "describe",
        column: str | None = None,
        key: str | None = None,
        question: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        quantization: Any = None,
        num_crops: int | None = None,
        load_options: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        batch_size: int = 4,
        keep_columns: Sequence[str] = (),
    ) -> None:
        from ..model import VisionModel

        _check_task(task)
        self.settings = batch_settings(task, question=question, batch_size=batch_size, options=options)
        self.column = column
        self.key = key
        self.keep_columns = tuple(keep_columns)
        load = load_kwargs(
            device=device, dtype=dtype, quantization=quantization, num_crops=num_crops, extra=load_options
        )
        name = None if model is None else os.fspath(model)  # None: PHI3VISION_MODEL or the default
        self.model: VisionModel = VisionModel.from_pretrained(name, **load)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        names = list(batch)
        column = self.column or _image_column(names)
        images = [_image_value(value) for value in batch[column]]
        key_column = self.key or _key_column(names, column, images[0] if images else None)
        keys = [str(_plain(value)) for value in batch[key_column]]
        own_questions = batch["question"] if "question" in batch else [None] * len(images)
        items = [
            # A path or URL is the image "as given"; bytes and pixels are named by their key.
            BatchItem(key=key, image=image if isinstance(image, str) else key, source="", question=_text(own))
            for key, image, own in zip(keys, images, own_questions, strict=True)
        ]
        rows = [
            result_row(self.settings, item, "", result)
            for item, result in zip(items, self._generate(images, items), strict=True)
        ]
        out: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in ROW_FIELDS}
        for name in self.keep_columns:
            out[name] = [_plain(value) for value in batch[name]]
        return out

    def _generate(self, images: Sequence[Any], items: Sequence[BatchItem]) -> list[Generation]:
        """Results in order. A row whose prompt cannot be built (no question, a question with
        chat markers, no image) fails on its own; ``generate_batch`` fails bad images itself."""
        results: list[Generation | None] = [None] * len(images)
        prompts: list[Prompt] = []
        positions: list[int] = []
        for position, (image, item) in enumerate(zip(images, items, strict=True)):
            try:
                if image is None:
                    raise OptionsError("the row has no image")
                question = self.settings.question_for(item)
                text = task_instruction(self.settings.task, question, self.model.task_prompts)
                prompts.append(Prompt().user(text, images=[image]))
                positions.append(position)
            except Phi3VisionError as exc:
                results[position] = Generation.failed(exc, self.model.model_ref)
        if prompts:
            generated = self.model.generate_batch(
                prompts, batch_size=self.settings.batch_size, options=self.settings.options
            )
            for position, result in zip(positions, generated, strict=True):
                results[position] = result
        return [r if r is not None else Generation.failed(RuntimeError("not run")) for r in results]


def _plain(value: Any) -> Any:
    """A numpy scalar or array as the Python value it holds (what Arrow and JSON expect)."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def _image_value(value: Any) -> Any:
    """What the image loader gets: a str (path or URL), bytes, or a pixel array as it is."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        return str(value) if isinstance(value, str) else bytes(value)
    if getattr(value, "ndim", None) == 0:  # a numpy str_ or bytes_ scalar
        return _image_value(value.item())
    return value


def _text(value: Any) -> str | None:
    """A row's own question: a non-empty string, else none."""
    value = _plain(value)
    return value if isinstance(value, str) and value.strip() else None


def _image_column(names: Sequence[str]) -> str:
    for name in IMAGE_COLUMNS:
        if name in names:
            return name
    raise OptionsError(
        f"no image column: expected one of {', '.join(IMAGE_COLUMNS)} or column=NAME; "
        f"the rows have {', '.join(names) or 'no columns'}"
    )


def _key_column(names: Sequence[str], column: str, sample: Any) -> str:
    for name in _KEY_COLUMNS:
        if name in names:
            return name
    if sample is None or isinstance(sample, str):
        return column
    raise OptionsError(
        f"no key column to name the rows by (the image column {column!r} holds no paths): give "
        "key=NAME, or read with include_paths=True to get a 'path' column"
    )


# --------------------------------------------------------------------------------------------
# Checks done on the driver, before any actor starts


def _check_task(task: str) -> str:
    """The task's name (an old spelling such as "ocr" is accepted); map_images runs MAP_TASKS."""
    name = TASK_ALIASES.get(task, task) if isinstance(task, str) else task
    if name not in MAP_TASKS:
        raise OptionsError(f"map_images runs the tasks {', '.join(MAP_TASKS)}, not {task!r}")
    return str(name)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionsError(f"{name} must be a positive int, got {value!r}")
    return value


def load_kwargs(
    *,
    device: str = "auto",
    dtype: str = "auto",
    quantization: Any = None,
    num_crops: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``VisionModel.from_pretrained``, checked against its signature,
    so that a misspelt option fails on the driver and not in every actor."""
    from ..model import VisionModel

    accepted = set(inspect.signature(VisionModel.from_pretrained).parameters) - {"name_or_path"}
    kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
    if num_crops is not None:
        kwargs["num_crops"] = num_crops
    if quantization is not None:
        if "quantization" not in accepted:
            raise OptionsError(
                "quantization was asked for, but this phi3vision's VisionModel.from_pretrained has "
                "no quantization option"
            )
        kwargs["quantization"] = quantization
    for name, value in (extra or {}).items():
        if name not in accepted:
            raise OptionsError(
                f"unknown load option {name!r}: VisionModel.from_pretrained takes "
                f"{', '.join(sorted(accepted))}"
            )
        if name in kwargs:
            raise OptionsError(f"{name} is given twice: as an argument and in load_options")
        kwargs[name] = value
    return kwargs


def _check_resources(
    ray: Any, concurrency: int | tuple[int, int], num_gpus: float, num_cpus: float
) -> tuple[Any, float]:
    """The actor pool, and CPUs per actor, refusing settings that would hang on this cluster."""
    from ray.data import ActorPoolStrategy

    if isinstance(concurrency, tuple):
        if len(concurrency) != 2:
            raise OptionsError(f"concurrency must be an int or (min, max), got {concurrency!r}")
        low, high = (_positive_int("concurrency", n) for n in concurrency)
        if low > high:
            raise OptionsError(f"concurrency (min, max) needs min <= max, got {concurrency!r}")
        compute = ActorPoolStrategy(min_size=low, max_size=high)
    else:
        high = _positive_int("concurrency", concurrency)
        compute = ActorPoolStrategy(size=high)
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float)) or num_gpus < 0:
        raise OptionsError(f"num_gpus must be a number >= 0, got {num_gpus!r}")
    if num_gpus > 1 and not float(num_gpus).is_integer():
        raise OptionsError(f"num_gpus above 1 must be a whole number of GPUs, got {num_gpus!r}")
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or not num_cpus > 0:
        raise OptionsError(f"num_cpus must be a number > 0, got {num_cpus!r}")
    if ray.is_initialized():
        cpus = ray.cluster_resources().get("CPU", 0.0)
        if high * num_cpus > cpus - 1:
            raise OptionsError(
                f"{high} actor(s) at num_cpus={num_cpus} would take {high * num_cpus:g} of the "
                f"cluster's {cpus:g} CPUs and leave less than one for reading the data, so the job "
                "would hang: lower num_cpus (a fraction such as 0.5 is fine) or concurrency"
            )
    return compute, float(num_cpus)


# --------------------------------------------------------------------------------------------
# Resume


def finished_keys(output: str | os.PathLike[str] | Iterable[str], *, retry_failed: bool = False) -> set[str]:
    """The keys already in ``output``: a JSON Lines file (``phi3vision batch`` writes one), a
    folder of them (``Dataset.write_json`` writes one), or the keys themselves. Rows recorded
    as failed count as finished unless ``retry_failed``. A missing file or folder has none."""
    if not isinstance(output, (str, os.PathLike)):
        return {str(key) for key in output}
    path = Path(output)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in {".json", ".jsonl"} and p.is_file())
    else:
        files = [path] if path.is_file() else []
    keys: set[str] = set()
    for file in files:
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                record = _resume_record(file, number, line)
                if record is not None and not (retry_failed and record.get("status") == "failed"):
                    keys.add(str(record["key"]))
    return keys


def _resume_record(file: Path, number: int, line: str) -> dict[str, Any] | None:
    if not line.strip():
        return None
    if not line.endswith("\n"):  # the partial last line of an interrupted write: not finished
        return None
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise OptionsError(f"{file} line {number} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or "key" not in record:
        raise OptionsError(f"{file} line {number} has no 'key': it is not a phi3vision results file")
    return record


def _without_keys(ds: Dataset, column: str, keys: set[str]) -> Dataset:
    """``ds`` less the rows whose key (compared as a string, as in the output) is in ``keys``:
    a filter expression, which Ray Data runs on Arrow blocks without calling Python per row."""
    import pyarrow
    from ray.data.datatype import DataType
    from ray.data.expressions import col

    as_text = col(column).cast(DataType.from_arrow(pyarrow.string()))
    return ds.filter(expr=as_text.not_in(sorted(keys)))


# --------------------------------------------------------------------------------------------
# The wiring


def map_images(
    ds: Dataset,
    *,
    task: str = "describe",
    model: str | os.PathLike[str] | None = None,
    column: str | None = None,
    key: str | None = None,
    question: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    quantization: Any = None,
    num_crops: int | None = None,
    load_options: Mapping[str, Any] | None = None,
    concurrency: int | tuple[int, int] = 1,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    batch_size: int = 4,
    resume_from: str | os.PathLike[str] | Iterable[str] | None = None,
    retry_failed: bool = False,
    keep_columns: Sequence[str] = (),
    **options: Any,
) -> Dataset:
    """Run ``task`` ("describe", "ocr" or "ask") over the images of ``ds``; returns the lazy
    dataset of result rows (see the module docstring), one per input row.

    Rows hold the image in a path or URL column, a bytes column (``read_binary_files``) or a
    pixel array column (``read_images``): ``column`` names it, else the first of
    ``IMAGE_COLUMNS`` present is used. ``key`` names the column that identifies a row in the
    output (default ``key``, ``path`` or ``url``). ``model`` is a Hub id or a checkpoint folder
    every worker can read (default: ``PHI3VISION_MODEL`` or the default model, resolved here).

    Resources: ``concurrency`` actors (an int, or ``(min, max)`` for an autoscaling pool), each
    with ``num_gpus`` GPUs (0.5 puts two replicas on a card) and ``num_cpus`` CPUs (default
    ``DEFAULT_NUM_CPUS``; settings that leave no CPU for reading are refused). ``batch_size``
    rows go to each ``generate_batch`` call. ``**options`` are ``GenerationOptions`` fields.

    Resume: with ``resume_from`` (an earlier output, see ``finished_keys``) rows whose key is
    already there are left out; Ray Data has no resume of its own.
    """
    from ..loading import default_model

    ray = _ray()
    _check_task(task)
    generation = resolve_options(None, options).model_dump(mode="json", exclude_unset=True)
    batch_settings(task, question=question, batch_size=batch_size, options=generation)
    load_kwargs(  # checked here so that a misspelt option fails once, not in every actor
        device=device, dtype=dtype, quantization=quantization, num_crops=num_crops, extra=load_options
    )
    compute, cpus = _check_resources(
        ray, concurrency, num_gpus, DEFAULT_NUM_CPUS if num_cpus is None else num_cpus
    )
    if resume_from is not None:
        done = finished_keys(resume_from, retry_failed=retry_failed)
        if done:
            names = ds.columns() or []
            key_column = key or _key_column(names, column or _image_column(names), None)
            ds = _without_keys(ds, key_column, done)
    name = default_model() if model is None else model
    return ds.map_batches(
        VisionPredictor,
        fn_constructor_args=(os.fspath(name),),
        fn_constructor_kwargs={
            "task": task,
            "column": column,
            "key": key,
            "question": question,
            "options": generation,
            "batch_size": batch_size,
            "keep_columns": tuple(keep_columns),
            "device": device,
            "dtype": dtype,
            "quantization": quantization,
            "num_crops": num_crops,
            "load_options": dict(load_options or {}),
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=compute,
        num_cpus=cpus,
        num_gpus=num_gpus if num_gpus > 0 else None,
    )


# The executor of `phi3vision batch --executor ray` (it uses the helpers above).
from .executor import RayExecutor, checkpoint_identity  # noqa: E402
