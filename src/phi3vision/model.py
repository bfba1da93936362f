"""``VisionModel``: the one front end, over any engine (phi3vision.engine).

It validates and prepares prompts, applies the limits, keeps the lifecycle, decides when
generation stops (phi3vision.stopping) and builds results with their timings; streams and
batches are built from the same pieces. It holds no tensor algorithm and imports no torch:
``TorchEngine`` runs the real weights, ``ScriptedEngine`` the testing kit's fake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from .calls import Call, CallMarks, GenerationStream, run_in_batches
from .engine import CLOSED_MESSAGE, Engine, EngineInfo, Method, Request
from .errors import ModelClosedError, OptionsError
from .limits import RequestLimits, check_model_options
from .options import GenerationOptions, resolve_options
from .prepared import PreparedPrompt
from .prompt import Prompt, batch_item, resolve_prompt
from .results import Generation, ModelRef
from .tasks import TaskCall, TaskMixin, get_task

if TYPE_CHECKING:
    from .images import ImagePolicy
    from .load_options import LoadOptions
    from .processing.processor import Encoding, Processor

PromptInput = Prompt | str
ModelT = TypeVar("ModelT", bound="VisionModel")


class ModelState(str, Enum):
    """A model is usable from loading until ``close()``."""

    LOADED = "loaded"
    CLOSED = "closed"

    def __str__(self) -> str:  # "loaded", as the state was a plain string before
        return str(self.value)

    def __format__(self, format_spec: str) -> str:
        return format(str(self.value), format_spec)


class ModelInfo(EngineInfo):
    """What was loaded and what was chosen (with the reason for each "auto" choice): the
    engine's ``EngineInfo`` and the front end's ``num_crops`` and ``state``."""

    num_crops: int
    state: Literal["loaded", "closed"]


class TokenCount(BaseModel):
    model_config = ConfigDict(frozen=True)

    total: int
    text_tokens: int
    image_tokens: int
    context_length: int

    @property
    def fits(self) -> bool:
        return self.total < self.context_length


class VisionModel(TaskMixin):
    """A Phi-3-vision checkpoint ready for inference. Build it with ``from_pretrained``."""

    def __init__(
        self,
        engine: Engine,
        processor: Processor,
        *,
        image_policy: ImagePolicy | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        image_policy, limits, _ = check_model_options(image_policy, limits)
        self.engine = engine
        self.processor = processor
        self.image_policy = image_policy
        self.limits = limits or RequestLimits()
        self._state = ModelState.LOADED

    # -- construction and lifecycle -------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        name_or_path: str | Path | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str = "auto",
        num_crops: int | None = None,
        revision: str | None = None,
        image_policy: ImagePolicy | None = None,
        feature_cache_size: int = 16,
        reuse_prefix: bool = True,
        compile: bool = False,
        limits: RequestLimits | None = None,
        quantization: str | None = None,
    ) -> ModelT:
        """Load a checkpoint: a Hub id (downloaded on first use, then cached; ``revision``
        pins a branch, tag or commit) or a local directory in the same layout. Without a
        name, the ``PHI3VISION_MODEL`` environment variable names it, else
        ``microsoft/Phi-3-vision-128k-instruct``.

        ``device``, ``dtype`` and ``attn_implementation`` default to "auto" (see ``info``);
        ``num_crops`` overrides the checkpoint's preprocessor setting for every call.
        ``image_policy`` (phi3vision.ImagePolicy) limits what images are read and how (sizes,
        URLs); ``limits`` (phi3vision.RequestLimits) what one prompt may ask for.

        Reuse of earlier work (both exact, both on by default): ``feature_cache_size`` image
        features are kept by image content (0 disables), and with ``reuse_prefix`` the KV cache
        of the last single-prompt call is kept so that a chat's next turn only prefills its
        new tokens. ``clear_caches()`` frees both.

        ``compile=True`` decodes with a static KV cache and a torch.compile'd step (CUDA graphs
        on GPU): the fastest decoding, after a compilation of some seconds to a minute for each
        new batch size and length bucket. It replaces ``reuse_prefix``.

        ``quantization`` ("int8" on CPU or CUDA; "int4", "nf4" on CUDA) stores the language
        model's linear layers quantised, layer by layer while loading (docs/loading.md). On a
        CPU, a ``MemoryWarning`` is issued when the planned memory exceeds what is available.

        The keywords are the fields of ``phi3vision.LoadOptions``.
        """
        from .load_options import LoadOptions
        from .loading import default_model

        check_model_options(image_policy, limits, feature_cache_size)  # strict types, before any work
        options = LoadOptions.of(
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            num_crops=num_crops,
            revision=revision,
            image_policy=image_policy,
            feature_cache_size=feature_cache_size,
            reuse_prefix=reuse_prefix,
            compile=compile,
            limits=limits,
            quantization=quantization,
        )
        return cls.load(default_model() if name_or_path is None else name_or_path, options)

    @classmethod
    def load(cls: type[ModelT], name_or_path: str | Path, options: LoadOptions) -> ModelT:
        """``from_pretrained`` with its options as one ``LoadOptions`` (what the CLI uses)."""
        from .engine.torch_engine import open_checkpoint_engine

        engine, processor = open_checkpoint_engine(name_or_path, options)
        return cls(engine, processor, image_policy=options.image_policy, limits=options.limits)

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def info(self) -> ModelInfo:
        engine = self.engine.info.model_dump()
        return ModelInfo(**engine, num_crops=self.processor.num_crops, state=self._state.value)

    @property
    def context_length(self) -> int:
        return self.engine.info.context_length

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef(**self.engine.info.model_dump(include=set(ModelRef.model_fields)))

    @property
    def module(self) -> Any:
        """The torch module (for advanced use); raises once the model is closed."""
        return self.engine.module

    @property
    def device(self) -> Any:
        """The ``torch.device`` the weights are on."""
        return self.engine.device

    @property
    def dtype(self) -> Any:
        """The ``torch.dtype`` of the weights."""
        return self.engine.dtype

    @property
    def attn_implementation(self) -> str:
        return self.engine.info.attn_implementation

    @property
    def reuse_prefix(self) -> bool:
        """Whether a single prompt's KV cache is kept for the next call (``from_pretrained``)."""
        return self.engine.reuse_prefix

    @property
    def prefix_reused_tokens(self) -> int:
        """Prompt positions taken from an earlier call's KV cache instead of prefilled (a counter)."""
        return self.engine.prefix_reused_tokens

    def clear_caches(self) -> None:
        """Forget cached image features and the last prompt's KV cache (frees their memory).
        With ``compile=True`` the static KV cache stays allocated for the next call; ``close()``
        frees it."""
        self.engine.clear_caches()

    def close(self) -> None:
        """Release the weights (and GPU memory). Further use raises ``ModelClosedError``."""
        self._state = ModelState.CLOSED
        self.engine.close()

    def __enter__(self: ModelT) -> ModelT:
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        info = self.engine.info
        return (
            f"{type(self).__name__}({info.model_id!r}, device={info.device!r}, dtype={info.dtype!r}, "
            f"attn={info.attn_implementation!r}, state={self._state.value!r})"
        )

    def _check_open(self) -> None:
        if self._state is ModelState.CLOSED:
            raise ModelClosedError(CLOSED_MESSAGE)

    # -- inputs ---------------------------------------------------------------------------

    def _prepare(
        self, prompt: PromptInput, images: Sequence[Any] | None, num_crops: int | None
    ) -> PreparedPrompt:
        """Render the prompt, read its images (policy and limits) and tokenize it."""
        from .images import describe_source, load_images

        self._check_open()
        text, sources = resolve_prompt(prompt, images)
        self.limits.check_images(len(sources))
        loaded = load_images(sources, self.image_policy)
        return self.processor.prepare(text, loaded, num_crops, [describe_source(s) for s in sources])

    def encode(
        self, prompt: PromptInput, images: Sequence[Any] | None = None, *, num_crops: int | None = None
    ) -> Encoding:
        """Model inputs for a prompt, exactly as the reference processor makes them (tensors:
        this imports torch)."""
        return self.processor.encoding(self._prepare(prompt, images, num_crops))

    def count_tokens(
        self, prompt: PromptInput, images: Sequence[Any] | None = None, *, num_crops: int | None = None
    ) -> TokenCount:
        """Text and image tokens of a prompt, without any model work."""
        prepared = self._prepare(prompt, images, num_crops)
        return TokenCount(
            total=prepared.num_tokens,
            text_tokens=prepared.num_tokens - prepared.num_image_tokens,
            image_tokens=prepared.num_image_tokens,
            context_length=self.context_length,
        )

    def logits(self, encoding: Encoding) -> Any:
        """Float32 logits ``(1, L, vocab)`` (a torch tensor) of one forward pass over the prompt."""
        self._check_open()
        return self.engine.logits(encoding)

    def _request(
        self,
        method: Method,
        prompt: PromptInput,
        images: Sequence[Any] | None,
        num_crops: int | None,
        options: GenerationOptions,
        task: TaskCall | None = None,
        batch_index: int | None = None,
    ) -> Request:
        prepared = self._prepare(prompt, images, num_crops)
        self.limits.check_context(prepared, options.max_new_tokens, self.context_length)
        if task is None:
            return Request(prepared, method, batch_index=batch_index)
        return Request(prepared, method, task.name, task.schema, batch_index)

    # -- generation -----------------------------------------------------------------------

    def _run(
        self,
        requests: Sequence[Request],
        options: GenerationOptions,
        started: float,
        prepare_s: Sequence[float],
    ) -> list[Generation]:
        marks = self._call_marks(started, prepare_s)
        return Call(self.engine, self.processor.tokenizer, requests, options, 8, marks).run_to_end()

    def _call_marks(self, started: float, prepare_s: Sequence[float]) -> CallMarks:
        return CallMarks(started, list(prepare_s), self.model_ref, lambda: self._state is ModelState.CLOSED)

    def _run_one(self, request: Callable[[], Request], options: GenerationOptions) -> Generation:
        started = self.engine.clock()
        prepared = request()
        return self._run([prepared], options, started, [self.engine.clock() - started])[0]

    def generate(
        self,
        prompt: PromptInput,
        images: Sequence[Any] | None = None,
        *,
        num_crops: int | None = None,
        task: TaskCall | str | None = None,
        options: GenerationOptions | Mapping[str, Any] | None = None,
        **option_fields: Any,
    ) -> Generation:
        """Generate an answer. ``prompt`` is a ``Prompt`` (with its images) or a raw string
        with ``<|image_N|>`` placeholders and ``images``. Options are ``GenerationOptions``
        fields, as keywords (``max_new_tokens=64``) or ``options=``. ``task`` names the task
        the call is for (the task helpers pass theirs; see phi3vision.tasks)."""
        resolved = resolve_options(options, option_fields)
        call = TaskCall(get_task(task).name) if isinstance(task, str) else task
        return self._run_one(
            lambda: self._request("generate", prompt, images, num_crops, resolved, call), resolved
        )

    def stream(
        self,
        prompt: PromptInput,
        images: Sequence[Any] | None = None,
        *,
        num_crops: int | None = None,
        options: GenerationOptions | Mapping[str, Any] | None = None,
        **option_fields: Any,
    ) -> GenerationStream:
        """Like ``generate``, but iterate over the returned stream to get the text as it is
        made, word by word; ``stream.result`` holds the final ``Generation`` (usage, timings)
        once it has ended. Inputs are checked at once."""
        started = self.engine.clock()
        resolved = resolve_options(options, option_fields)
        request = self._request("stream", prompt, images, num_crops, resolved)
        marks = self._call_marks(started, [self.engine.clock() - started])
        call = Call(self.engine, self.processor.tokenizer, [request], resolved, 1, marks)
        return GenerationStream(call.deltas(), lambda: call.results()[0])

    def generate_batch(
        self,
        prompts: Sequence[PromptInput | tuple[str, Sequence[Any]]],
        *,
        batch_size: int = 4,
        num_crops: int | None = None,
        options: GenerationOptions | Mapping[str, Any] | None = None,
        **option_fields: Any,
    ) -> list[Generation]:
        """Generate for many prompts, ``batch_size`` at a time, results in input order.

        Each item is a ``Prompt`` or a ``(raw_text, images)`` pair. An item that fails (a bad
        image, a bad prompt, too long) gets a result with ``finish_reason="error"`` and its
        ``error``; the others complete. Greedy output equals running the prompts one by one:
        the engine only batches rows that give one-by-one results together (the real model:
        rows in the same rotary regime). Items are read and preprocessed ``batch_size`` at a
        time, so memory does not grow with the number of prompts. In each result,
        ``preprocess_s`` is the item's own; its time to first token and total time count from
        the start of its batch's model work.
        """
        from .processing.processor import check_num_crops

        self._check_open()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionsError(f"batch_size must be a positive int, got {batch_size!r}")
        if num_crops is not None:
            check_num_crops(num_crops)
        resolved = resolve_options(options, option_fields)
        return run_in_batches(
            len(prompts),
            batch_size,
            lambda index: self._request(
                "generate_batch", *batch_item(prompts[index]), num_crops, resolved, None, index
            ),
            lambda requests, started, prepare_s: self._run(requests, resolved, started, prepare_s),
            self.engine,
            resolved.max_new_tokens,
            self.model_ref,
        )


__all__ = ["GenerationStream", "ModelInfo", "ModelState", "PromptInput", "TokenCount", "VisionModel"]
