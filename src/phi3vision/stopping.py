"""When generation stops, and the text it has made so far: no torch needed here, so the
testing kit's fake model follows exactly the same rules as the real one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .constraints import CONSTRAINED_STOP_TOKEN_IDS, constraint_of
from .options import GenerationOptions
from .processing.tokenization import DEFAULT_STOP_TOKEN_IDS, PromptTokenizer


@dataclass(frozen=True)
class StopConditions:
    token_ids: frozenset[int]
    strings: tuple[str, ...]


def stop_conditions(options: GenerationOptions, tokenizer: PromptTokenizer) -> StopConditions:
    """``stop=None``: the default stop tokens; otherwise exactly the ids and strings given.
    A string that is one special token of the vocabulary (``"<|end|>"``) stops as that id.
    A constrained answer (json_schema, regex, choices) may also end at ``</s>`` by default."""
    if options.stop is None:
        constrained = constraint_of(options) is not None
        default_ids = CONSTRAINED_STOP_TOKEN_IDS if constrained else DEFAULT_STOP_TOKEN_IDS
        return StopConditions(frozenset(default_ids), ())
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
        cuts = [at for at in (text.find(stop) for stop in self.stop_strings) if at >= 0]
        if cuts:
            text = text[: min(cuts)]  # the earliest stop string wins, whatever their order
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
