"""The decode-loop side of constraints (xgrammar and torch): compile a ``Constraint`` into a
grammar, mask each step's logits with it, and advance one matcher per row.

Phi-3 traps handled here:

- the mask has the model's width (32064 output ids), not the tokenizer's (32045 with added
  tokens) nor ``tokenizer.vocab_size`` (32000): ids left outside a narrower mask stay allowed;
- control and placeholder tokens (``<|user|>``, ``<|placeholder38|>``, ...) are blanked, so
  they can never be emitted as content inside a JSON string;
- the stop ids are passed explicitly (the library defaults to the eos alone), and a row is
  done when it emits one.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import torch

from ..errors import OptionsError, Phi3VisionError
from .spec import Constraint, constraint_of, require_backend

if TYPE_CHECKING:
    from ..options import GenerationOptions
    from ..processing.tokenization import PromptTokenizer
    from ..stopping import StopConditions


class Grammars:
    """The grammar compiler for one tokenizer at one vocabulary width (built once per model:
    about 0.1 s), and the grammars compiled with it, one per constraint (cached)."""

    def __init__(self, tokenizer: PromptTokenizer, vocab_width: int) -> None:
        require_backend("constrained decoding (json_schema, regex, choices)")
        import xgrammar

        self.vocab_width = vocab_width
        blanked = set(tokenizer.tokenizer.get_added_tokens_decoder())  # <s>, <|end|>, placeholders...
        size = tokenizer.vocab_size
        # An empty string marks a special token: the grammar never allows it as content.
        vocab = [
            "" if index in blanked or index >= size else tokenizer.tokenizer.id_to_token(index) or ""
            for index in range(vocab_width)
        ]
        info = xgrammar.TokenizerInfo(
            vocab, xgrammar.VocabType.BYTE_FALLBACK, vocab_size=vocab_width, add_prefix_space=True
        )
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=min(8, os.cpu_count() or 1))
        self._compiled: dict[Constraint, Any] = {}
        self._lock = threading.Lock()

    def compile(self, constraint: Constraint) -> Any:
        """The compiled grammar of ``constraint`` (compiled on first use, then cached)."""
        with self._lock:
            compiled = self._compiled.get(constraint)
            if compiled is None:
                compiled = self._compiled[constraint] = self._compile(constraint)
            return compiled

    def _compile(self, constraint: Constraint) -> Any:
        try:
            if constraint.kind == "json_schema":
                return self._compiler.compile_json_schema(constraint.text, any_whitespace=False)
            if constraint.kind == "regex":
                return self._compiler.compile_regex(constraint.text)
            choices = " | ".join(json.dumps(choice, ensure_ascii=False) for choice in constraint.choices)
            return self._compiler.compile_grammar(f"root ::= {choices}")
        except RuntimeError as exc:  # xgrammar's parse and conversion errors
            reason = str(exc).strip().splitlines()[-1].split(": ", 1)[-1] if str(exc).strip() else repr(exc)
            raise OptionsError(f"{constraint.kind} cannot be compiled into a grammar: {reason}") from exc


_GRAMMARS: weakref.WeakKeyDictionary[PromptTokenizer, dict[int, Grammars]] = weakref.WeakKeyDictionary()
_GRAMMARS_LOCK = threading.Lock()


def grammars_for(tokenizer: PromptTokenizer, vocab_width: int) -> Grammars:
    """The ``Grammars`` of a model's tokenizer, built on its first constrained call."""
    with _GRAMMARS_LOCK:
        by_width = _GRAMMARS.setdefault(tokenizer, {})
        if vocab_width not in by_width:
            by_width[vocab_width] = Grammars(tokenizer, vocab_width)
        return by_width[vocab_width]


class RowMatchers:
    """One grammar matcher per row of a batch: ``mask`` the logits, then ``advance`` with the
    tokens chosen. A row that has emitted a stop token is done and no longer masked."""

    def __init__(
        self, grammars: Grammars, constraint: Constraint, rows: int, stop_ids: Collection[int]
    ) -> None:
        import xgrammar

        compiled = grammars.compile(constraint)
        self._xgrammar = xgrammar
        self.vocab_width = grammars.vocab_width
        self.stop_ids = frozenset(stop_ids)
        self._matchers = [
            xgrammar.GrammarMatcher(compiled, override_stop_tokens=sorted(self.stop_ids)) for _ in range(rows)
        ]
        self.done = [False] * rows
        self._bitmask = xgrammar.allocate_token_bitmask(rows, self.vocab_width)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, V)`` float logits with every token the grammar forbids set to -inf (in place)."""
        if logits.shape[-1] != self.vocab_width:
            raise Phi3VisionError(
                f"internal error: logits have {logits.shape[-1]} ids, the grammar mask {self.vocab_width}"
            )
        self._bitmask.fill_(-1)  # all allowed: rows that are done keep every token
        for row, matcher in enumerate(self._matchers):
            if not self.done[row]:
                matcher.fill_next_token_bitmask(self._bitmask, row)
        self._xgrammar.apply_token_bitmask_inplace(logits, self._bitmask.to(logits.device))
        return logits

    def advance(self, tokens: torch.Tensor) -> None:
        """Feed each row's chosen token to its matcher (this waits for the device)."""
        for row, token in enumerate(tokens.tolist()):
            if self.done[row]:
                continue
            if not self._matchers[row].accept_token(int(token)):
                raise Phi3VisionError(f"internal error: the grammar refused token {token} it allowed")
            self.done[row] = int(token) in self.stop_ids


def row_matchers(
    options: GenerationOptions,
    tokenizer: PromptTokenizer,
    vocab_width: int,
    rows: int,
    stop: StopConditions,
) -> RowMatchers | None:
    """The matchers of a call's rows, or None when the call is not constrained. ``vocab_width``
    is the model's output width (its logits' last dimension)."""
    constraint = constraint_of(options)
    if constraint is None:
        return None
    require_backend("constrained decoding (json_schema, regex, choices)")
    return RowMatchers(grammars_for(tokenizer, vocab_width), constraint, rows, stop.token_ids)
