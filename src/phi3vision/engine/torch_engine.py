"""``TorchEngine``: a checkpoint's weights on a device, and every tensor algorithm of a call.

It owns the module, the device, the feature cache, the prefix cache (take and keep), the
static decoder and the mapping of out-of-memory errors; batching rules are the pure functions
of ``batching``. One lock makes it safe to share between threads: it is taken per chunk of
tokens, so a stream left half-read never blocks other callers.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ..constraints.masking import row_matchers
from ..errors import ModelClosedError, OutOfMemoryError
from ..stopping import stop_conditions
from . import CLOSED_MESSAGE, STREAM_CLOSED_MESSAGE, EngineInfo, Request
from .batching import left_padded, rope_groups
from .caches import FeatureCache, PrefixCache, image_key
from .decoding import StaticDecoder, TokenChooser, decode_steps, new_cache

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from ..load_options import LoadOptions
    from ..loading import Checkpoint
    from ..modeling.phi3v import Phi3VForCausalLM
    from ..options import GenerationOptions
    from ..processing.processor import Encoding, Processor
    from ..processing.tokenization import PromptTokenizer
    from ..results import Generation


_LOADING = threading.Lock()
"""Held while a checkpoint is built and loaded (see ``TorchEngine.load``)."""


class PromptTensors:
    """One prompt as the engine sees it: its ids, and its images' pixel views and content
    keys, each made once and only when needed (an image whose features are cached never
    needs its pixels)."""

    def __init__(
        self,
        token_ids: Sequence[int],
        images: Sequence[Image.Image],
        image_sizes: Sequence[Sequence[int]],
        num_crops: int,
        views: Any,
    ) -> None:
        self.token_ids = list(token_ids)
        self.images = list(images)
        self.image_sizes = [tuple(size) for size in image_sizes]
        self.num_crops = num_crops
        self._views = views  # (index) -> (1 + rows*cols, 3, 336, 336)
        self._keys: list[str] | None = None

    @classmethod
    def of_encoding(cls, encoding: Encoding) -> PromptTensors:
        return cls(
            encoding.input_ids[0].tolist(),
            encoding.images,
            encoding.image_sizes.tolist(),
            encoding.num_crops,
            encoding.image_views,
        )

    def views(self, index: int) -> torch.Tensor:
        views: torch.Tensor = self._views(index)
        return views

    @property
    def keys(self) -> list[str]:
        """Content keys of the images (fingerprint and num_crops), computed once."""
        if self._keys is None:
            from ..images import image_fingerprint

            self._keys = [image_key(image_fingerprint(i), self.num_crops) for i in self.images]
        return self._keys


class TorchEngine:
    """The checkpoint's ``Phi3VForCausalLM`` on ``device``; see the module docstring."""

    def __init__(
        self,
        module: Phi3VForCausalLM,
        checkpoint: Checkpoint,
        device: torch.device,
        dtype: torch.dtype,
        attn_implementation: str,
        reasons: dict[str, str],
        *,
        tokenizer: PromptTokenizer,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        feature_cache_size: int = 16,
        reuse_prefix: bool = True,
        compile: bool = False,
        quantization: str | None = None,
    ) -> None:
        self._module: Phi3VForCausalLM | None = module
        self._tokenizer = tokenizer  # constrained decoding compiles its grammars over it
        self._device = device
        self._dtype = dtype
        self._image_mean = tuple(image_mean)
        self._image_std = tuple(image_std)
        context_length = int(checkpoint.config.get("max_position_embeddings", 4096))
        self.info = EngineInfo(
            model_id=checkpoint.model_id,
            revision=checkpoint.revision,
            directory=str(checkpoint.directory),
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            attn_implementation=attn_implementation,
            reasons=dict(reasons),
            num_parameters=sum(p.numel() for p in module.parameters()),
            context_length=context_length,
            quantization=quantization,
        )
        self.original_context = int(checkpoint.config.get("original_max_position_embeddings", context_length))
        """Positions of the short rotary factors (LongRoPE): batching and prefix reuse need it."""
        self._lock = threading.RLock()
        self._closed = False
        self.features = FeatureCache(feature_cache_size)
        self.prefix = PrefixCache(reuse_prefix and not compile, self.original_context)
        self._static = StaticDecoder(module, compile=True) if compile else None

    @classmethod
    def load(
        cls,
        checkpoint: Checkpoint,
        *,
        device: str,
        dtype: str,
        attn_implementation: str,
        tokenizer: PromptTokenizer,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        num_crops: int,
        feature_cache_size: int = 16,
        reuse_prefix: bool = True,
        compile: bool = False,
        quantization: str | None = None,
    ) -> TorchEngine:
        """Choose device, dtype and attention ("auto" or a name) and put the weights there,
        quantised layer by layer with ``quantization`` (phi3vision.quantization)."""
        from ..devices import choose_attn_implementation, choose_device, choose_dtype
        from ..loading import build_empty_model, load_weights
        from ..memory import warn_if_over_memory

        torch_device, device_choice = choose_device(device)
        torch_dtype, dtype_choice = choose_dtype(dtype, torch_device)
        attn_choice = choose_attn_implementation(attn_implementation, torch_device, torch_dtype)
        warn_if_over_memory(checkpoint.config, torch_device.type, dtype_choice.value, quantization, num_crops)
        # accelerate's init_empty_weights patches torch.nn.Module for the whole process while it
        # builds: a module made meanwhile by another thread's load would get meta parameters.
        with _LOADING, device_errors():
            module = build_empty_model(checkpoint.config, attn_choice.value)
            load_weights(module, checkpoint, torch_device, torch_dtype, quantization)
        reasons = {
            "device": device_choice.reason,
            "dtype": dtype_choice.reason,
            "attn_implementation": attn_choice.reason,
        }
        return cls(
            module,
            checkpoint,
            torch_device,
            torch_dtype,
            attn_choice.value,
            reasons,
            tokenizer=tokenizer,
            image_mean=image_mean,
            image_std=image_std,
            feature_cache_size=feature_cache_size,
            reuse_prefix=reuse_prefix,
            compile=compile,
            quantization=quantization,
        )

    # -- state ----------------------------------------------------------------------------

    @property
    def module(self) -> Phi3VForCausalLM:
        if self._module is None:
            raise ModelClosedError(CLOSED_MESSAGE)
        return self._module

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def reuse_prefix(self) -> bool:
        return self.prefix.enabled

    @reuse_prefix.setter
    def reuse_prefix(self, value: bool) -> None:
        self.prefix.enabled = bool(value) and self._static is None

    @property
    def prefix_reused_tokens(self) -> int:
        return self.prefix.reused_tokens

    def clock(self) -> float:
        return time.perf_counter()

    def finished(self, request: Request, result: Generation) -> None:
        """Nothing to record."""

    def clear_caches(self) -> None:
        with self._lock:
            self.features.clear()
            self.prefix.clear()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._module = None
            self._static = None  # it holds the module and its compiled step
            self.prefix.clear()
            self.features.clear()
            gc.collect()
            if self._device.type == "cuda":
                torch.cuda.empty_cache()

    # -- model work -----------------------------------------------------------------------

    def batches(self, requests: Sequence[Request], max_new_tokens: int) -> list[list[int]]:
        return rope_groups([r.prompt.num_tokens for r in requests], max_new_tokens, self.original_context)

    def run(
        self, requests: Sequence[Request], options: GenerationOptions, *, chunk_size: int = 8
    ) -> Iterator[list[list[int]]]:
        self.module  # noqa: B018 - raises if closed
        rows = [self._tensors(request) for request in requests]
        for row in rows:  # pixels now, before the lock: threads preprocess while others decode
            for index in range(len(row.images)):
                if self.features.capacity == 0 or row.keys[index] not in self.features:
                    row.views(index)
        return self._locked(self._chunks(rows, options, chunk_size))

    def logits(self, encoding: Encoding) -> torch.Tensor:
        with self._lock, device_errors(), torch.inference_mode():
            embeds = self._embed(PromptTensors.of_encoding(encoding))
            output = self.module(embeds, attention_mask=encoding.attention_mask.to(self._device))
            logits: torch.Tensor = output.logits.float()
            return logits

    def _tensors(self, request: Request) -> PromptTensors:
        from ..processing.hd_transform import image_to_views

        prompt = request.prompt
        made: dict[int, torch.Tensor] = {}

        def views(index: int) -> torch.Tensor:
            if index not in made:
                made[index], _ = image_to_views(
                    prompt.images[index], prompt.num_crops, self._image_mean, self._image_std, pad=False
                )
            return made[index]

        return PromptTensors(prompt.token_ids, prompt.images, prompt.image_sizes, prompt.num_crops, views)

    def _locked(self, chunks: Generator[list[list[int]], None, None]) -> Iterator[list[list[int]]]:
        """``chunks`` with the lock, inference mode and error mapping around each step."""
        try:
            while True:
                with self._lock, device_errors(), torch.inference_mode():
                    if self._closed:
                        raise ModelClosedError(STREAM_CLOSED_MESSAGE)
                    chunk = next(chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            with self._lock, torch.inference_mode():
                chunks.close()

    def _chunks(
        self, rows: Sequence[PromptTensors], options: GenerationOptions, chunk_size: int
    ) -> Generator[list[list[int]], None, None]:
        """The three cache strategies (static, prefix reuse, fresh), one decoding loop."""
        model = self.module
        static = self._static  # closing the engine clears the attribute, not this call's copy
        length = max(len(row.token_ids) for row in rows)
        past = 0
        if static is not None:
            cache = static.cache(len(rows), length + options.max_new_tokens)
        else:
            cache = None
            if len(rows) == 1:
                cache, past = self.prefix.take(rows[0].token_ids, rows[0].keys if rows[0].images else [])
            if cache is None:
                cache = new_cache(model)
        made: list[torch.Tensor] = []
        ended = False
        steps: Generator[torch.Tensor, None, None] | None = None
        try:
            embeds = [self._embed(row, past)[0] for row in rows]  # each (L_i - past, hidden)
            batch, mask, ids = left_padded(
                embeds, [row.token_ids for row in rows], past, length, self._device
            )
            stop = stop_conditions(options, self._tokenizer)
            matchers = row_matchers(options, self._tokenizer, model.vocab_size, len(rows), stop)
            chooser = TokenChooser(options, self._device, matchers)
            steps = decode_steps(model, batch, mask, chooser, options.max_new_tokens, cache, ids, static)
            pending: list[torch.Tensor] = []
            for tokens in steps:
                made.append(tokens)
                pending.append(tokens)
                if len(made) > 1 and len(pending) < chunk_size and len(made) < options.max_new_tokens:
                    continue
                chunk = torch.stack(pending, dim=1).tolist()  # (B, chunk): one wait for the device
                pending.clear()
                yield chunk
            ended = True
        except GeneratorExit:
            ended = True  # the caller has all it needs; the cache holds what was fed so far
            raise
        finally:
            if steps is not None:
                steps.close()
            if static is not None:
                static.release(cache)
            elif ended and len(rows) == 1 and not self._closed:
                self._keep(rows[0], cache, made)

    def _keep(self, row: PromptTensors, cache: Any, made: list[torch.Tensor]) -> None:
        """Keep a single prompt's KV cache: it holds the prompt and every generated token but
        the last (that one was never fed back)."""
        fed = torch.stack(made[:-1], dim=1)[0].tolist() if len(made) > 1 else []
        keys = row.keys if row.images else []
        self.prefix.keep(len(row.token_ids), row.token_ids + fed, keys, cache)

    def _image_features(self, row: PromptTensors, numbers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Projected features of images ``numbers`` (1-based): from the feature cache where
        possible, the rest through the vision tower in one batch."""
        use_cache = self.features.capacity > 0
        features: dict[int, torch.Tensor] = {}
        missing = []
        for number in numbers:
            cached = self.features.get(row.keys[number - 1]) if use_cache else None
            if cached is None:
                missing.append(number)
            else:
                features[number] = cached
        if missing:
            computed = self.module.image_features(
                [row.views(number - 1).to(self._device) for number in missing],
                torch.tensor([row.image_sizes[number - 1] for number in missing], dtype=torch.long),
            )
            for number, feats in zip(missing, computed, strict=True):
                features[number] = feats
                if use_cache:
                    self.features.put(row.keys[number - 1], feats)
        return features

    def _embed(self, row: PromptTensors, start: int = 0) -> torch.Tensor:
        """Embeddings ``(1, L - start, hidden)`` of the prompt's positions from ``start``."""
        token_ids = row.token_ids[start:]
        numbers = sorted({-i for i in token_ids if i < 0})
        ids = torch.tensor([token_ids], dtype=torch.long, device=self._device)
        return self.module.embed(ids, [self._image_features(row, numbers)])


def open_checkpoint_engine(name_or_path: str | Path, options: LoadOptions) -> tuple[TorchEngine, Processor]:
    """A checkpoint's engine and its processor (tokenizer and image settings)."""
    from ..loading import open_checkpoint
    from ..processing.hd_transform import CLIP_MEAN, CLIP_STD
    from ..processing.processor import Processor, check_num_crops
    from ..processing.tokenization import PromptTokenizer

    checkpoint = open_checkpoint(name_or_path, options.revision)
    preprocessor = checkpoint.preprocessor
    num_crops = options.num_crops if options.num_crops is not None else preprocessor.get("num_crops", 16)
    vocab_size = checkpoint.config.get("vocab_size")
    processor = Processor(
        PromptTokenizer.from_file(checkpoint.tokenizer_file, vocab_size=vocab_size),
        num_crops=check_num_crops(num_crops),
        image_mean=preprocessor.get("image_mean", CLIP_MEAN),
        image_std=preprocessor.get("image_std", CLIP_STD),
    )
    engine = TorchEngine.load(
        checkpoint,
        device=options.device,
        dtype=options.dtype,
        attn_implementation=options.attn_implementation,
        tokenizer=processor.tokenizer,
        image_mean=processor.image_mean,
        image_std=processor.image_std,
        num_crops=processor.num_crops,
        feature_cache_size=options.feature_cache_size,
        reuse_prefix=options.reuse_prefix,
        compile=options.compile,
        quantization=options.quantization,
    )
    return engine, processor


@contextmanager
def device_errors() -> Iterator[None]:
    """Turn an accelerator's out-of-memory error into ours, leaving the model usable."""
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
