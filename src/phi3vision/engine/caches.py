"""Reuse of earlier work between calls: image features, and the KV cache of a chat's prefix.

- ``FeatureCache``: projected image features keyed by image content and num_crops, so a second
  question about the same image (chat turns, compare then ask) skips the vision tower.
- ``PrefixCache``: the KV cache of the last single-prompt call with the token ids it holds, so a
  chat's next turn only prefills what is new. Reuse is exact: a cached position is used only
  when every token (and every image) before it is the same.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class FeatureCache:
    """A small LRU map from an image key (content fingerprint and num_crops, see
    ``image_key``) to its projected features, ``(num_image_tokens, hidden)``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: str, features: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        self._entries[key] = features
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def image_key(fingerprint: str, num_crops: int) -> str:
    """What identifies an image's features: its pixels and the crop setting."""
    return f"{fingerprint}:{num_crops}"


@dataclass
class PrefixEntry:
    """A KV cache and what it holds: ``token_ids`` (images as ``-N``) with ``image_keys[N-1]``
    identifying image N, all computed with the short rotary factors."""

    token_ids: list[int]
    image_keys: list[str]
    cache: Any


def reusable_length(entry: PrefixEntry, token_ids: Sequence[int], image_keys: Sequence[str]) -> int:
    """How many leading positions of ``token_ids`` the entry's KV cache already holds.

    Counts identical leading ids, then backs off to the start of any image run that is cut
    short or whose image differs, and keeps at least one position to prefill (it gives the
    logits of the first new token).
    """
    limit = min(len(entry.token_ids), len(token_ids) - 1)
    same = 0
    while same < limit and entry.token_ids[same] == token_ids[same]:
        same += 1
    position = 0
    while position < same:
        token = token_ids[position]
        if token >= 0:
            position += 1
            continue
        run_end = position
        while run_end < len(token_ids) and token_ids[run_end] == token:
            run_end += 1
        number = -token
        cached_key = entry.image_keys[number - 1] if number <= len(entry.image_keys) else None
        if run_end > same or cached_key != image_keys[number - 1]:
            return position
        position = run_end
    return same


class PrefixCache:
    """The KV cache of the last single-prompt call, lent to the next one: ``take`` hands over
    the reusable part (the entry is gone until ``keep`` stores a new one), ``keep`` stores a
    call's cache with the ids it holds. Only prompts of at most ``max_length`` positions (the
    checkpoint's short-rotary range) qualify: past it the reference recomputes every position
    with the long factors."""

    def __init__(self, enabled: bool, max_length: int) -> None:
        self.enabled = enabled
        self.max_length = max_length
        self.reused_tokens = 0
        """Prompt positions taken from a kept cache instead of prefilled (a counter)."""
        self._entry: PrefixEntry | None = None

    def take(self, token_ids: Sequence[int], image_keys: Sequence[str]) -> tuple[Any, int]:
        """The kept cache cropped to what ``token_ids`` can reuse, and that length; ``(None, 0)``
        when nothing can be reused."""
        entry, self._entry = self._entry, None  # the caller owns it now
        if entry is None or len(token_ids) > self.max_length:
            return None, 0
        reuse = reusable_length(entry, token_ids, image_keys)
        if reuse == 0:
            return None, 0
        entry.cache.crop(reuse - entry.cache.get_seq_length())
        self.reused_tokens += reuse
        return entry.cache, reuse

    def keep(self, prompt_length: int, token_ids: list[int], image_keys: list[str], cache: Any) -> None:
        """Keep ``cache`` for the next call if it holds exactly ``token_ids`` (prompt, then the
        generated tokens that went back into the model)."""
        if not self.enabled or prompt_length > self.max_length:
            return
        if cache.get_seq_length() != len(token_ids):
            return  # not what we think it holds: never reuse a cache we cannot describe exactly
        self._entry = PrefixEntry(token_ids=token_ids, image_keys=image_keys, cache=cache)

    def clear(self) -> None:
        self._entry = None
