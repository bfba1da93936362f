"""The executor behind ``phi3vision batch --executor ray``: the job plans, fingerprints and
writes its output in this process, as in-process; Ray actors (``map_images``) generate."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..jobs import RESULT_FIELDS, JobExecutor
from ..options import GenerationOptions
from ..results import Generation
from ..tasks import TaskPrompts
from . import _ray, load_kwargs, map_images


def checkpoint_identity(
    model: str | os.PathLike[str], revision: str | None, num_crops: int | None
) -> tuple[str, str | None, int]:
    """``(model_id, revision, num_crops)`` as a ``VisionModel`` loaded with these arguments
    reports them: what a batch job's fingerprint needs. Reads the checkpoint's small files only
    (a Hub id is fetched into the cache of the machine that runs this)."""
    from ..loading import open_checkpoint
    from ..processing.processor import check_num_crops

    checkpoint = open_checkpoint(os.fspath(model), revision)
    crops = num_crops if num_crops is not None else checkpoint.preprocessor.get("num_crops", 16)
    return checkpoint.model_id, checkpoint.revision, check_num_crops(crops)


class RayExecutor(JobExecutor):
    """Runs a batch job's generation on Ray (``BatchJob(RayExecutor(...), ...)``): the job
    plans, fingerprints and writes its output here, as in-process; the actors generate.

    Connects to the cluster at ``address`` (default: a local Ray started here, or the one
    ``RAY_ADDRESS`` names) unless Ray is already initialised; ``close()`` shuts down only what
    it started. Model and resource arguments are those of ``map_images``.
    """

    task_prompts = TaskPrompts()
    """The prompts of a ``VisionModel`` loaded in the actors (they use the defaults)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        address: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        quantization: Any = None,
        num_crops: int | None = None,
        load_options: Mapping[str, Any] | None = None,
        concurrency: int | tuple[int, int] = 1,
        num_gpus: float = 0,
        num_cpus: float | None = None,
        progress: bool = False,
    ) -> None:
        from ..loading import default_model

        ray = _ray()
        self.model = os.fspath(default_model() if model is None else model)
        self._map_args: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "quantization": quantization,
            "num_crops": num_crops,
            "load_options": dict(load_options or {}),
            "concurrency": concurrency,
            "num_gpus": num_gpus,
            "num_cpus": num_cpus,
        }
        load_kwargs(
            device=device, dtype=dtype, quantization=quantization, num_crops=num_crops, extra=load_options
        )
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = progress
            revision = (load_options or {}).get("revision")
            identity = ray.remote(num_cpus=0)(checkpoint_identity).remote(self.model, revision, num_crops)
            self.model_id, self.revision, self.num_crops = ray.get(identity)
        except BaseException:
            self.close()
            raise

    def stream(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int, options: GenerationOptions
    ) -> Iterator[Generation]:
        """Results for ``(instruction, image)`` requests, in their order, as they finish."""
        if not requests:
            return
        ray = _ray()
        rows = [{"key": str(n), "image": image, "question": text} for n, (text, image) in enumerate(requests)]
        results = map_images(
            ray.data.from_items(rows),
            task="ask",  # the instruction is the job's, built on the driver
            model=self.model,
            column="image",
            key="key",
            batch_size=batch_size,
            **self._map_args,
            **options.model_dump(mode="json"),
        )
        results.context.execution_options.preserve_order = True
        for row in results.iter_rows():
            yield Generation.model_validate({name: row[name] for name in RESULT_FIELDS})

    def close(self) -> None:
        if self._started:
            self._started = False
            _ray().shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

