"""The decoding loop: KV cache, greedy or sampled next tokens, stop tokens and stop strings.

``decode_steps`` runs prefill then one step per token for a left-padded batch and yields each
step's tokens; the caller decides when every row is done (stop tokens, stop strings, length).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .options import GenerationOptions
from .processing.tokenization import PromptTokenizer
from .stopping import CompletionText, StopConditions

if TYPE_CHECKING:
    from .constraints.masking import RowMatchers
    from .modeling.phi3v import Phi3VForCausalLM


class TokenChooser:
    """Greedy argmax, or sampling with temperature, top-k, top-p and a repetition penalty.

    With ``matchers`` (a constrained call), the logits are masked by each row's grammar first,
    and each row's matcher is advanced with the token chosen (which waits for the device).
    """

    def __init__(
        self, options: GenerationOptions, device: torch.device, matchers: RowMatchers | None = None
    ) -> None:
        self.options = options
        self.matchers = matchers
        self.generator: torch.Generator | None = None
        if options.do_sample:
            # A generator of our own keeps seeded sampling independent of global RNG state.
            self.generator = torch.Generator(device=device)
            if options.seed is None:
                self.generator.seed()  # a fresh random seed for this generator only
            else:
                self.generator.manual_seed(options.seed)

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """``(B, V)`` logits -> ``(B,)`` next tokens. ``seen`` ``(B, T)`` holds ids already in
        the sequence (negative ids and padding are ignored) for the repetition penalty."""
        logits = logits.float()
        if self.matchers is None:
            return self._choose(logits, seen)
        tokens = self._choose(self.matchers.mask(logits), seen)
        self.matchers.advance(tokens)
        return tokens

    def _choose(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        opts = self.options
        if opts.repetition_penalty != 1.0 and seen is not None:
            index = seen.clamp(min=0)
            scores = logits.gather(1, index)
            penalised = torch.where(
                scores > 0, scores / opts.repetition_penalty, scores * opts.repetition_penalty
            )
            logits = logits.scatter(1, index, torch.where(seen >= 0, penalised, scores))
        if not opts.do_sample:
            return logits.argmax(dim=-1)
        logits = logits / opts.temperature
        if opts.top_k > 0:
            kth = torch.topk(logits, min(opts.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if opts.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # Drop a token once the tokens before it already cover top_p (the first always stays).
            drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= opts.top_p
            drop = drop_sorted.scatter(1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: 0.. from each row's first real token."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def new_cache(model: Phi3VForCausalLM) -> Any:
    """An empty KV cache for ``model``'s language model."""
    from transformers import DynamicCache

    return DynamicCache(config=model.configs.text)


class StaticDecoder:
    """The fast decode path: a static KV cache allocated once, and one compiled decode step
    (torch.compile; with CUDA graphs on GPU) reused for every token.

    Shapes must not change between steps for the compiled step to be reused: the cache has a
    fixed length (the call's prompt plus new tokens, rounded up to a power of two so that calls
    of similar length share one compiled graph) and the attention mask always covers all of it.
    """

    def __init__(self, model: Phi3VForCausalLM, compile: bool = True) -> None:
        self.model = model
        self._cache: Any = None
        self._cache_shape: tuple[int, int] = (0, 0)
        self._lent = False
        device_type = next(model.parameters()).device.type
        mode = "reduce-overhead" if device_type == "cuda" else None  # reduce-overhead = CUDA graphs
        self._step = (
            torch.compile(self._decode_step, dynamic=False, mode=mode) if compile else self._decode_step
        )

    @staticmethod
    def cache_length(length: int) -> int:
        return max(256, 1 << (length - 1).bit_length())

    def cache(self, batch: int, length: int) -> Any:
        """A cleared static cache for ``batch`` rows of up to ``length`` positions, for one call.

        The kept cache is lent to one call at a time (``release`` gives it back): a stream
        that is read slowly must not have its cache cleared by a call made in between. A call
        that finds it lent gets a cache of its own (and the compiled step may compile again).
        """
        from transformers import StaticCache

        shape = (batch, self.cache_length(length))
        if self._lent:
            return StaticCache(config=self.model.configs.text, max_cache_len=shape[1])
        if self._cache is None or self._cache_shape != shape:
            self._cache = None  # free the old one first
            self._cache = StaticCache(config=self.model.configs.text, max_cache_len=shape[1])
            self._cache_shape = shape
        else:
            self._cache.reset()
        self._lent = True
        return self._cache

    def release(self, cache: Any) -> None:
        if cache is self._cache:
            self._lent = False

    def _decode_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        embeds = self.model.language_model.get_input_embeddings()(tokens[:, None])  # (B, 1, hidden)
        output = self.model(
            embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        return output.logits[:, -1]  # (B, vocab)

    def step(
        self, tokens: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        return self._step(tokens, positions, attention_mask, cache)


def decode_steps(
    model: Phi3VForCausalLM,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    chooser: TokenChooser,
    max_new_tokens: int,
    cache: Any,
    prompt_ids: torch.Tensor | None = None,
    static: StaticDecoder | None = None,
) -> Generator[torch.Tensor, None, None]:
    """Yield ``(B,)`` next tokens, step after step, up to ``max_new_tokens`` steps.

    ``attention_mask`` ``(B, P + L)`` covers the ``P`` positions already in ``cache`` and the
    ``L`` new ones whose embeddings are ``inputs_embeds`` ``(B, L, hidden)``; it has zeros on
    the left padding. Tokens stay on the device: nothing here waits for the host. With
    ``static``, ``cache`` is its static cache and each step runs its compiled step.
    """
    past = cache.get_seq_length()
    positions = left_padded_positions(attention_mask)[:, past:]  # (B, L)
    seen = prompt_ids if chooser.options.repetition_penalty != 1.0 else None
    output = model(
        inputs_embeds,
        attention_mask=attention_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    next_positions = positions[:, -1:] + 1  # (B, 1)
    embed_tokens = model.language_model.get_input_embeddings()
    logits = output.logits[:, -1]
    if static is not None:
        # One mask over the whole static cache: positions not yet written are masked by causality.
        full_mask = attention_mask.new_ones(
            attention_mask.shape[0], static.cache_length(attention_mask.shape[1] + max_new_tokens)
        )
        full_mask[:, : attention_mask.shape[1]] = attention_mask
    for step in range(max_new_tokens):
        tokens = chooser(logits, seen)  # (B,)
        yield tokens
        if step + 1 == max_new_tokens:
            return
        if seen is not None:
            seen = torch.cat([seen, tokens[:, None]], dim=1)
        if static is not None:
            logits = static.step(tokens, next_positions, full_mask, cache)
            next_positions = next_positions + 1
            continue
        attention_mask = torch.cat(
            [attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1
        )
        output = model(
            embed_tokens(tokens[:, None]),
            attention_mask=attention_mask,
            position_ids=next_positions,
            past_key_values=cache,
            use_cache=True,
        )
        logits = output.logits[:, -1]
        next_positions = next_positions + 1


@dataclass
class RowsOutcome:
    """What a decoding loop made, row by row."""

    texts: list[CompletionText]
    stopped: list[bool]
    fed_tokens: list[list[int]]
    """Generated tokens that went back into the model (all but the last): what the KV cache
    holds after the prompt."""
    first_token_at: float | None = field(default=None)


def collect_rows(
    steps: Iterator[torch.Tensor],
    batch_size: int,
    stop: StopConditions,
    tokenizer: PromptTokenizer,
    max_new_tokens: int,
    sync_every: int = 8,
    on_text: Callable[[int, str], None] | None = None,
) -> Generator[None, None, RowsOutcome]:
    """Read the tokens of ``decode_steps`` until every row has stopped; yields between reads.

    The device runs ahead: tokens are copied to the host in chunks of ``sync_every`` steps
    (1 for streaming), except the very first token, which is read at once so that the time
    to first token is measured, not estimated. A row's tokens after its stop are ignored.
    """
    texts = [CompletionText(tokenizer, stop.strings) for _ in range(batch_size)]
    stopped = [False] * batch_size
    outcome = RowsOutcome(texts=texts, stopped=stopped, fed_tokens=[[] for _ in range(batch_size)])
    made: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    for tokens in steps:
        made.append(tokens)
        pending.append(tokens)
        if len(made) > 1 and len(pending) < sync_every and len(made) < max_new_tokens:
            continue
        chunk = torch.stack(pending, dim=1).tolist()  # (B, chunk): one wait for the device
        pending.clear()
        if outcome.first_token_at is None:
            outcome.first_token_at = time.perf_counter()
        for row, row_tokens in enumerate(chunk):
            for token in row_tokens:
                if stopped[row]:
                    break
                if token in stop.token_ids:
                    texts[row].token_ids.append(token)
                    stopped[row] = True
                    break
                delta = texts[row].add(token)
                stopped[row] = texts[row].stopped_by_string
                if delta and on_text is not None:
                    on_text(row, delta)
        if all(stopped):
            break
        yield None
    if isinstance(steps, Generator):
        steps.close()
    if len(made) > 1:
        fed = torch.stack(made[:-1], dim=1).tolist()  # (B, steps - 1)
        outcome.fed_tokens = [[int(t) for t in row] for row in fed]
    for row, text in enumerate(texts):
        tail = text.finish()
        if tail and on_text is not None:
            on_text(row, tail)
    return outcome
