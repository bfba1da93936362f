"""The decoding loop: KV cache, greedy or sampled next tokens, stop tokens and stop strings.

``decode_steps`` runs prefill then one step per token for a left-padded batch and yields each
step's tokens; the caller decides when every row is done (stop tokens, stop strings, length).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .options import GenerationOptions
from .processing.tokenization import DEFAULT_STOP_TOKEN_IDS, PromptTokenizer

if TYPE_CHECKING:
    from .modeling.phi3v import Phi3VForCausalLM


@dataclass(frozen=True)
class StopConditions:
    token_ids: frozenset[int]
    strings: tuple[str, ...]


def stop_conditions(options: GenerationOptions, tokenizer: PromptTokenizer) -> StopConditions:
    """``stop=None``: the default stop tokens; otherwise exactly the ids and strings given.
    A string that is one special token of the vocabulary (``"<|end|>"``) stops as that id."""
    if options.stop is None:
        return StopConditions(frozenset(DEFAULT_STOP_TOKEN_IDS), ())
    ids: set[int] = set()
    strings: list[str] = []
    for item in options.stop:
        if isinstance(item, int):
            ids.add(item)
            continue
        token_id = tokenizer.token_id(item)
        if token_id is not None and item.startswith("<|") and item.endswith("|>"):
            ids.add(token_id)
        else:
            strings.append(item)
    return StopConditions(frozenset(ids), tuple(strings))


class TokenChooser:
    """Greedy argmax, or sampling with temperature, top-k, top-p and a repetition penalty."""

    def __init__(self, options: GenerationOptions, device: torch.device) -> None:
        self.options = options
        self.generator: torch.Generator | None = None
        if options.do_sample:
            # A generator of our own keeps seeded sampling independent of global RNG state.
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(options.seed if options.seed is not None else int(torch.seed()))

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """``(B, V)`` logits -> ``(B,)`` next tokens. ``seen`` ``(B, T)`` holds ids already in
        the sequence (negative ids and padding are ignored) for the repetition penalty."""
        opts = self.options
        logits = logits.float()
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


def decode_steps(
    model: Phi3VForCausalLM,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    chooser: TokenChooser,
    max_new_tokens: int,
    prompt_ids: torch.Tensor | None = None,
) -> Generator[torch.Tensor, None, None]:
    """Yield ``(B,)`` next tokens, step after step, up to ``max_new_tokens`` steps.

    ``inputs_embeds`` is ``(B, L, hidden)`` and ``attention_mask`` ``(B, L)`` with zeros on the
    left padding. The KV cache lives for the length of the loop.
    """
    from transformers import DynamicCache

    cache: Any = DynamicCache(config=model.configs.text)
    positions = left_padded_positions(attention_mask)  # (B, L)
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
    for step in range(max_new_tokens):
        tokens = chooser(output.logits[:, -1], seen)  # (B,)
        yield tokens
        if step + 1 == max_new_tokens:
            return
        if seen is not None:
            seen = torch.cat([seen, tokens[:, None]], dim=1)
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
        next_positions = next_positions + 1


class CompletionText:
    """Turns generated ids into text, streaming-safe: it never emits half of a UTF-8 character
    or the beginning of what may turn out to be a stop string, and it cuts at a stop string."""

    def __init__(self, tokenizer: PromptTokenizer, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.token_ids: list[int] = []
        self.emitted = ""
        self.stopped_by_string = False
        self._text = ""

    def add(self, token_id: int) -> str:
        """Add a token; returns the new text that is safe to show."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids)
        for stop in self.stop_strings:
            at = text.find(stop)
            if at >= 0:
                text = text[:at]
                self.stopped_by_string = True
        self._text = text
        safe = text if self.stopped_by_string else self._holdback(text)
        if not safe.startswith(self.emitted):
            return ""  # decoding shifted earlier text (rare); the rest comes out at finish()
        delta, self.emitted = safe[len(self.emitted) :], safe
        return delta

    def _holdback(self, text: str) -> str:
        text = text.rstrip("\ufffd")  # an incomplete multi-byte character
        keep = len(text)
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    keep = min(keep, len(text) - size)
                    break
        return text[:keep]

    def finish(self) -> str:
        """The rest of the text, once generation has ended."""
        if not self._text.startswith(self.emitted):
            self.emitted = self._text
            return ""
        delta, self.emitted = self._text[len(self.emitted) :], self._text
        return delta

    @property
    def text(self) -> str:
        return self._text
