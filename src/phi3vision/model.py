"""``VisionModel``: one loaded checkpoint, its lifecycle (loaded -> closed), its device, dtype
and attention implementation, and the lock that makes it safe to share between threads.

The algorithms live elsewhere (processing/, modeling/, generation.py, tasks.py); this module
wires them together and keeps the state.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from .errors import (
    ContextLengthError,
    ModelClosedError,
    OutOfMemoryError,
    Phi3VisionError,
)
from .limits import RequestLimits, check_model_options
from .loading import default_model
from .options import GenerationOptions, resolve_options
from .prompt import Prompt, batch_item, resolve_prompt
from .results import Generation, ModelRef, Timings, Usage
from .tasks import TaskMixin

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .caches import PrefixEntry
    from .images import ImagePolicy
    from .loading import Checkpoint
    from .modeling.phi3v import Phi3VForCausalLM
    from .processing.processor import Encoding, Processor

PromptInput = Prompt | str


class ModelInfo(BaseModel):
    """What was loaded and what was chosen (with the reason for each "auto" choice)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_id: str
    revision: str | None
    directory: str
    device: str
    dtype: str
    attn_implementation: str
    quantization: str | None = None
    reasons: dict[str, str]
    num_parameters: int
    num_crops: int
    context_length: int
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
        model: Phi3VForCausalLM,
        processor: Processor,
        checkpoint: Checkpoint,
        device: torch.device,
        dtype: torch.dtype,
        attn_implementation: str,
        reasons: dict[str, str],
        image_policy: ImagePolicy | None = None,
        feature_cache_size: int = 16,
        reuse_prefix: bool = True,
        compile: bool = False,
        limits: RequestLimits | None = None,
        quantization: str | None = None,
    ) -> None:
        from .caches import FeatureCache
        from .generation import StaticDecoder

        image_policy, limits, cache_size = check_model_options(image_policy, limits, feature_cache_size)
        self._model: Phi3VForCausalLM | None = model
        self.processor = processor
        self._checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self._reasons = reasons
        self.quantization = quantization
        self.image_policy = image_policy
        self.limits = limits or RequestLimits()
        self._num_parameters = sum(p.numel() for p in model.parameters())
        self._lock = threading.RLock()
        self._closed = False
        self._feature_cache = FeatureCache(cache_size)
        self.reuse_prefix = reuse_prefix and not compile
        self._static = StaticDecoder(model, compile=True) if compile else None
        self._prefix: PrefixEntry | None = None
        self.prefix_reused_tokens = 0
        """Prompt positions taken from an earlier call's KV cache instead of prefilled (a counter)."""
        self._original_context = int(
            checkpoint.config.get("original_max_position_embeddings", self.context_length)
        )

    # -- construction and lifecycle -------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
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
    ) -> VisionModel:
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
        """
        from .devices import choose_attn_implementation, choose_device, choose_dtype
        from .loading import build_empty_model, load_weights, open_checkpoint
        from .memory import warn_if_over_memory
        from .processing.processor import Processor, check_num_crops
        from .processing.tokenization import PromptTokenizer

        check_model_options(image_policy, limits, feature_cache_size)  # before any slow work
        checkpoint = open_checkpoint(default_model() if name_or_path is None else name_or_path, revision)
        torch_device, device_choice = choose_device(device)
        torch_dtype, dtype_choice = choose_dtype(dtype, torch_device)
        attn_choice = choose_attn_implementation(attn_implementation, torch_device, torch_dtype)
        crops = check_num_crops(
            num_crops if num_crops is not None else checkpoint.preprocessor.get("num_crops", 16)
        )
        warn_if_over_memory(checkpoint.config, torch_device.type, dtype_choice.value, quantization, crops)
        model = build_empty_model(checkpoint.config, attn_choice.value)
        with _device_errors():
            load_weights(model, checkpoint, torch_device, torch_dtype, quantization)
        processor = Processor(
            PromptTokenizer.from_file(checkpoint.tokenizer_file, vocab_size=model.vocab_size),
            num_crops=crops,
            image_mean=checkpoint.preprocessor.get("image_mean", (0.48145466, 0.4578275, 0.40821073)),
            image_std=checkpoint.preprocessor.get("image_std", (0.26862954, 0.26130258, 0.27577711)),
        )
        return cls(
            model,
            processor,
            checkpoint,
            torch_device,
            torch_dtype,
            attn_choice.value,
            {
                "device": device_choice.reason,
                "dtype": dtype_choice.reason,
                "attn_implementation": attn_choice.reason,
            },
            image_policy=image_policy,
            feature_cache_size=feature_cache_size,
            reuse_prefix=reuse_prefix,
            compile=compile,
            limits=limits,
            quantization=quantization,
        )

    @property
    def state(self) -> Literal["loaded", "closed"]:
        return "closed" if self._closed else "loaded"

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self._checkpoint.model_id,
            revision=self._checkpoint.revision,
            directory=str(self._checkpoint.directory),
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            attn_implementation=self.attn_implementation,
            quantization=self.quantization,
            reasons=dict(self._reasons),
            num_parameters=self._num_parameters,
            num_crops=self.processor.num_crops,
            context_length=self.context_length,
            state=self.state,
        )

    @property
    def context_length(self) -> int:
        return int(self._checkpoint.config.get("max_position_embeddings", 4096))

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef(
            model_id=self._checkpoint.model_id,
            revision=self._checkpoint.revision,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            attn_implementation=self.attn_implementation,
            quantization=self.quantization,
        )

    @property
    def module(self) -> Phi3VForCausalLM:
        """The torch module (for advanced use); raises once the model is closed."""
        if self._model is None:
            raise ModelClosedError(
                "this VisionModel was closed; load a new one with VisionModel.from_pretrained"
            )
        return self._model

    def close(self) -> None:
        """Release the weights (and GPU memory). Further use raises ``ModelClosedError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._model = None
            self._static = None  # it holds the model and its compiled step
            self._prefix = None
            self._feature_cache.clear()
            gc.collect()
            if self.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()

    def __enter__(self) -> VisionModel:
        self.module  # noqa: B018 - raises if closed
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VisionModel({self._checkpoint.model_id!r}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, attn={self.attn_implementation!r}, "
            f"state={self.state!r})"
        )

    # -- inputs ---------------------------------------------------------------------------

    def _load_images(self, sources: Sequence[Any]) -> list[Image.Image]:
        from .images import load_images

        return load_images(sources, self.image_policy)

    def _prepare(self, prompt: PromptInput, images: Sequence[Any] | None) -> tuple[str, list[Image.Image]]:
        text, sources = resolve_prompt(prompt, images)
        self.limits.check_images(len(sources))
        return text, self._load_images(sources)

    def encode(
        self, prompt: PromptInput, images: Sequence[Any] | None = None, *, num_crops: int | None = None
    ) -> Encoding:
        """Model inputs for a prompt, exactly as the reference processor makes them."""
        self.module  # noqa: B018 - raises if closed
        text, loaded = self._prepare(prompt, images)
        return self.processor.encode(text, loaded, num_crops)

    def count_tokens(
        self, prompt: PromptInput, images: Sequence[Any] | None = None, *, num_crops: int | None = None
    ) -> TokenCount:
        """Text and image tokens of a prompt, without any model work."""
        self.module  # noqa: B018 - raises if closed
        text, loaded = self._prepare(prompt, images)
        ids = self.processor.token_ids(text, loaded, num_crops)
        image_tokens = sum(1 for i in ids if i < 0)
        return TokenCount(
            total=len(ids),
            text_tokens=len(ids) - image_tokens,
            image_tokens=image_tokens,
            context_length=self.context_length,
        )

    def _check_length(self, encoding: Encoding, options: GenerationOptions) -> None:
        self.limits.check_tokens(encoding.num_tokens, encoding.num_image_tokens)
        needed = encoding.num_tokens + options.max_new_tokens
        if needed > self.context_length:
            raise ContextLengthError(
                f"the prompt takes {encoding.num_tokens} tokens ({encoding.num_image_tokens} for images) and "
                f"max_new_tokens is {options.max_new_tokens}: {needed} > the context of "
                f"{self.context_length}. "
                "Use fewer or smaller images, a lower num_crops, a shorter prompt or fewer new tokens."
            )

    # -- model work -----------------------------------------------------------------------

    def _image_keys(self, encoding: Encoding) -> list[str]:
        """Content keys of the encoding's images (computed once per encoding)."""
        if encoding.image_keys is None:
            from .caches import image_key
            from .images import image_fingerprint

            encoding.image_keys = [
                image_key(image_fingerprint(i), encoding.num_crops) for i in encoding.images
            ]
        return encoding.image_keys

    def _image_features(self, encoding: Encoding, numbers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Projected features of images ``numbers`` (1-based): from the feature cache where
        possible, the rest through the vision tower in one batch."""

        use_cache = self._feature_cache.capacity > 0
        keys = self._image_keys(encoding) if use_cache else []
        features: dict[int, torch.Tensor] = {}
        missing = []
        for number in numbers:
            cached = self._feature_cache.get(keys[number - 1]) if use_cache else None
            if cached is None:
                missing.append(number)
            else:
                features[number] = cached
        if missing:
            computed = self.module.image_features(
                [encoding.image_views(number - 1).to(self.device) for number in missing],
                encoding.image_sizes[[number - 1 for number in missing]],
            )
            for number, feats in zip(missing, computed, strict=True):
                features[number] = feats
                if use_cache:
                    self._feature_cache.put(keys[number - 1], feats)
        return features

    def _make_pixels(self, encoding: Encoding) -> None:
        """Compute the pixel values of the images whose features are not cached, before the
        call takes the model's lock, so that threads preprocess while others use the model."""
        keys = self._image_keys(encoding) if self._feature_cache.capacity > 0 else []
        for index in range(len(encoding.images)):
            if not keys or keys[index] not in self._feature_cache:
                encoding.image_views(index)

    def _embed(self, encoding: Encoding, start: int = 0) -> torch.Tensor:
        """Embeddings ``(1, L - start, hidden)`` of the encoding's positions from ``start``."""
        ids = encoding.input_ids[:, start:].to(self.device)
        numbers = sorted({-int(i) for i in ids[0].unique() if i < 0})
        return self.module.embed(ids, [self._image_features(encoding, numbers)])

    def clear_caches(self) -> None:
        """Forget cached image features and the last prompt's KV cache (frees their memory).
        With ``compile=True`` the static KV cache stays allocated for the next call; ``close()``
        frees it."""
        with self._lock:
            self._feature_cache.clear()
            self._prefix = None

    def _left_padded(
        self, encodings: Sequence[Encoding], past: int, length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings ``(B, length - past, hidden)`` of the positions after ``past``, the
        attention mask ``(B, length)`` and the ids ``(B, length)`` (``-1`` on the padding), each
        row padded on the left to ``length``."""
        import torch

        embeds = [self._embed(e, past)[0] for e in encodings]  # each (L_i - past, hidden)
        batch = torch.zeros(
            len(embeds), length - past, embeds[0].shape[-1], dtype=embeds[0].dtype, device=self.device
        )
        mask = torch.zeros(len(embeds), length, dtype=torch.long, device=self.device)
        ids = torch.full((len(embeds), length), -1, dtype=torch.long, device=self.device)
        for row, (embed, encoding) in enumerate(zip(embeds, encodings, strict=True)):
            batch[row, batch.shape[1] - embed.shape[0] :] = embed
            mask[row, length - encoding.num_tokens :] = 1
            ids[row, length - encoding.num_tokens :] = encoding.input_ids[0].to(self.device)
        return batch, mask, ids

    def _take_prefix(self, encoding: Encoding) -> tuple[Any, int]:
        """A KV cache for this call and how many of its leading positions are already filled.

        The last call's cache is reused up to the longest exactly-equal prefix (tokens and
        images). Only prompts within the short-rotary range qualify: past it the reference
        recomputes every position with the long factors.
        """
        from .caches import reusable_length
        from .generation import new_cache

        entry, self._prefix = self._prefix, None  # this call owns it now
        fits_short = encoding.num_tokens <= self._original_context
        if entry is None or not fits_short:
            return new_cache(self.module), 0
        keys = self._image_keys(encoding) if encoding.images else []
        reuse = reusable_length(entry, encoding.input_ids[0].tolist(), keys)
        if reuse == 0:
            return new_cache(self.module), 0
        entry.cache.crop(reuse - entry.cache.get_seq_length())
        self.prefix_reused_tokens += reuse
        return entry.cache, reuse

    def _keep_prefix(self, encoding: Encoding, cache: Any, generated: list[int]) -> None:
        """Keep this call's KV cache for the next call (single prompts in the short range)."""
        from .caches import PrefixEntry

        if self._closed or not self.reuse_prefix or encoding.num_tokens > self._original_context:
            return
        token_ids = encoding.input_ids[0].tolist() + generated
        if cache.get_seq_length() != len(token_ids):
            return  # not what we think it holds: never reuse a cache we cannot describe exactly
        keys = self._image_keys(encoding) if encoding.images else []
        self._prefix = PrefixEntry(token_ids=token_ids, image_keys=keys, cache=cache)

    def logits(self, encoding: Encoding) -> torch.Tensor:
        """Float32 logits ``(1, L, vocab)`` of one forward pass over the whole prompt."""
        import torch

        with self._lock, _device_errors(), torch.inference_mode():
            embeds = self._embed(encoding)
            output = self.module(embeds, attention_mask=encoding.attention_mask.to(self.device))
            return output.logits.float()

    def _generate_rows(
        self,
        encodings: Sequence[Encoding],
        options: GenerationOptions,
        started: float,
        preprocess_s: Sequence[float],
    ) -> list[Generation]:
        """Generate for several encodings at once (left padding), to the end."""
        steps = self._step_rows(encodings, options, started, preprocess_s)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                results: list[Generation] = done.value
                return results

    def _step_rows(
        self,
        encodings: Sequence[Encoding],
        options: GenerationOptions,
        started: float,
        preprocess_s: Sequence[float],
        on_text: Callable[[int, str], None] | None = None,
        sync_every: int = 8,
    ) -> Generator[None, None, list[Generation]]:
        """The heart of every call: yields after each look at the tokens (every ``sync_every``
        decoding steps), returns the results.

        The caller holds the lock and inference mode around each ``next()``; nothing here
        keeps model state between steps except this call's own KV cache.
        """

        from .constraints.masking import row_matchers
        from .generation import TokenChooser, collect_rows, decode_steps, new_cache
        from .stopping import stop_conditions

        model = self.module
        stop = stop_conditions(options, self.processor.tokenizer)
        matchers = row_matchers(options, self.processor.tokenizer, model.vocab_size, len(encodings), stop)
        if matchers is not None:
            sync_every = 1  # the matchers read every token on the host anyway
        static = self._static  # closing the model clears the attribute, not this call's copy
        length = max(e.num_tokens for e in encodings)
        if static is not None:
            cache, past = static.cache(len(encodings), length + options.max_new_tokens), 0
        elif len(encodings) == 1:
            cache, past = self._take_prefix(encodings[0])
        else:
            cache, past = new_cache(model), 0
        try:
            batch, mask, ids = self._left_padded(encodings, past, length)
            chooser = TokenChooser(options, self.device, matchers)
            steps = decode_steps(model, batch, mask, chooser, options.max_new_tokens, cache, ids, static)
            outcome = yield from collect_rows(
                steps,
                len(encodings),
                stop,
                self.processor.tokenizer,
                options.max_new_tokens,
                sync_every,
                on_text,
            )
        finally:
            if static is not None:
                static.release(cache)
        if len(encodings) == 1 and static is None:
            self._keep_prefix(encodings[0], cache, outcome.fed_tokens[0])
        ended = time.perf_counter()
        first_token_at = outcome.first_token_at or ended
        results = []
        for row, encoding in enumerate(encodings):
            completion = len(outcome.texts[row].token_ids)
            decode_s = max(0.0, ended - first_token_at)
            results.append(
                Generation(
                    text=outcome.texts[row].text,
                    token_ids=list(outcome.texts[row].token_ids),
                    finish_reason="stop" if outcome.stopped[row] else "length",
                    usage=Usage(
                        prompt_tokens=encoding.num_tokens,
                        image_tokens=encoding.num_image_tokens,
                        completion_tokens=completion,
                    ),
                    timings=Timings(
                        preprocess_s=preprocess_s[row],
                        time_to_first_token_s=first_token_at - started,
                        decode_s=decode_s,
                        total_s=ended - started,
                        tokens_per_second=(completion - 1) / decode_s
                        if completion > 1 and decode_s > 0
                        else 0.0,
                    ),
                    model=self.model_ref,
                )
            )
        return results

    def _start(
        self,
        prompt: PromptInput,
        images: Sequence[Any] | None,
        num_crops: int | None,
        options: GenerationOptions | Mapping[str, Any] | None,
        overrides: Mapping[str, Any],
    ) -> tuple[Encoding, GenerationOptions, float, float]:
        started = time.perf_counter()
        resolved = resolve_options(options, overrides)
        encoding = self.encode(prompt, images, num_crops=num_crops)
        self._check_length(encoding, resolved)
        self._make_pixels(encoding)
        return encoding, resolved, started, time.perf_counter() - started

    def generate(
        self,
        prompt: PromptInput,
        images: Sequence[Any] | None = None,
        *,
        num_crops: int | None = None,
        options: GenerationOptions | Mapping[str, Any] | None = None,
        **option_fields: Any,
    ) -> Generation:
        """Generate an answer. ``prompt`` is a ``Prompt`` (with its images) or a raw string
        with ``<|image_N|>`` placeholders and ``images``. Options are ``GenerationOptions``
        fields, as keywords (``max_new_tokens=64``) or ``options=``."""
        import torch

        encoding, resolved, started, preprocess_s = self._start(
            prompt, images, num_crops, options, option_fields
        )
        with self._lock, _device_errors(), torch.inference_mode():
            return self._generate_rows([encoding], resolved, started, [preprocess_s])[0]

    def stream(
        self,
        prompt: PromptInput,
        images: Sequence[Any] | None = None,
        *,
        num_crops: int | None = None,
        options: GenerationOptions | Mapping[str, Any] | None = None,
        **option_fields: Any,
    ) -> GenerationStream:
        """Like ``generate``, but iterate over the returned stream to get text as it is made;
        ``stream.result`` holds the final ``Generation`` (usage, timings) once it has ended."""
        encoding, resolved, started, preprocess_s = self._start(
            prompt, images, num_crops, options, option_fields
        )
        return GenerationStream(self, encoding, resolved, started, preprocess_s)

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
        rows are only batched with rows in the same rotary regime (see ``_rope_regime``).
        Items are read and preprocessed ``batch_size`` at a time, so memory does not grow with
        the number of prompts. In each result, ``preprocess_s`` is the item's own; its time to
        first token and total time count from the start of its batch's model work.
        """
        import torch

        from .errors import OptionsError
        from .processing.processor import check_num_crops

        self.module  # noqa: B018 - raises if closed
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionsError(f"batch_size must be a positive int, got {batch_size!r}")
        if num_crops is not None:
            check_num_crops(num_crops)
        resolved = resolve_options(options, option_fields)
        results: list[Generation | None] = [None] * len(prompts)
        for window in range(0, len(prompts), batch_size):
            ready: dict[int, tuple[Encoding, float]] = {}
            for index in range(window, min(window + batch_size, len(prompts))):
                started = time.perf_counter()
                try:
                    prompt, images = batch_item(prompts[index])
                    encoding = self.encode(prompt, images, num_crops=num_crops)
                    self._check_length(encoding, resolved)
                    self._make_pixels(encoding)
                    ready[index] = (encoding, time.perf_counter() - started)
                except Phi3VisionError as exc:
                    results[index] = self._failed(exc)
            for group in self._rope_groups(ready, resolved.max_new_tokens):
                try:
                    with self._lock, _device_errors(), torch.inference_mode():
                        generated = self._generate_rows(
                            [ready[index][0] for index in group],
                            resolved,
                            time.perf_counter(),
                            [ready[index][1] for index in group],
                        )
                except OutOfMemoryError as exc:
                    generated = [self._failed(exc) for _ in group]
                for index, generation in zip(group, generated, strict=True):
                    results[index] = generation
        finished = [result for result in results if result is not None]
        if len(finished) != len(prompts):  # every item either failed or was generated
            raise Phi3VisionError("internal error: a batch item has no result")
        return finished

    def _rope_regime(self, encoding: Encoding, max_new_tokens: int) -> str:
        """Which rotary factors a row's positions get. The checkpoints' LongRoPE uses its short
        factors while a forward pass's longest row fits the original 4096 positions and its long
        factors past them, for every row of the batch at once. Rows that stay short, rows that
        start long, and rows that cross the boundary while decoding must not share a batch."""
        if encoding.num_tokens + max_new_tokens <= self._original_context:
            return "short"
        if encoding.num_tokens > self._original_context:
            return "long"
        return "crossing"

    def _rope_groups(
        self, ready: Mapping[int, tuple[Encoding, float]], max_new_tokens: int
    ) -> list[list[int]]:
        """The items of one window split into batches that give one-by-one results."""
        groups: dict[str, list[int]] = {}
        singles: list[list[int]] = []
        for index, (encoding, _) in ready.items():
            regime = self._rope_regime(encoding, max_new_tokens)
            if regime == "crossing":
                singles.append([index])  # its switch to long factors is its own
            else:
                groups.setdefault(regime, []).append(index)
        return [*groups.values(), *singles]

    def _failed(self, exc: Exception) -> Generation:
        return Generation.failed(exc, self.model_ref)


class GenerationStream:
    """Iterate for text deltas; ``result`` is the final ``Generation`` once iteration ended."""

    def __init__(
        self,
        owner: VisionModel,
        encoding: Encoding,
        options: GenerationOptions,
        started: float,
        preprocess_s: float,
    ) -> None:
        self._owner = owner
        self._encoding = encoding
        self._options = options
        self._started = started
        self._preprocess_s = preprocess_s
        self._result: Generation | None = None
        self._iterator: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def _run(self) -> Iterator[str]:
        import torch

        owner = self._owner
        pending: list[str] = []
        steps = owner._step_rows(
            [self._encoding],
            self._options,
            self._started,
            [self._preprocess_s],
            on_text=lambda _row, delta: pending.append(delta),
            sync_every=1,
        )
        while True:
            # The lock is taken per step, so a stream left half-read never blocks other callers.
            try:
                with owner._lock, _device_errors(), torch.inference_mode():
                    if owner._closed:
                        steps.close()
                        raise ModelClosedError("the model was closed while this stream was being read")
                    next(steps)
            except StopIteration as done:
                self._result = done.value[0]
                break
            yield from pending
            pending.clear()
        yield from pending

    def close(self) -> None:
        """Stop generating (if iteration was left unfinished) and free the KV cache."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()

    @property
    def result(self) -> Generation:
        if self._result is None:
            raise RuntimeError("the stream has not finished: iterate over it to the end first")
        return self._result

    @property
    def text(self) -> str:
        return self.result.text


@contextmanager
def _device_errors() -> Iterator[None]:
    """Turn an accelerator's out-of-memory error into ours, leaving the model usable."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemoryError(
            "the device ran out of memory. Try a lower num_crops, fewer images, a smaller "
            "max_new_tokens or batch_size, or a smaller dtype."
        ) from exc
