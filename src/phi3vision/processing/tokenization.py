"""Prompt text with ``<|image_N|>`` placeholders -> token ids, as the reference processor does it.

The reference splits the prompt at the placeholders and tokenises every text chunk on its own,
each with its own start-of-sequence token (``<s>``, id 1), even an empty chunk. Image N then
takes ``num_image_tokens`` positions holding the id ``-N``; the model swaps those positions for
image features. A prompt with no placeholder is tokenised in one piece (one ``<s>``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from ..errors import PromptError

PLACEHOLDER = re.compile(r"<\|image_(\d+)\|>")
"""A well-formed placeholder: ``<|image_N|>`` with N a decimal number."""

_ANY_IMAGE_TAG = re.compile(r"<\|image_([^|<>]*)\|>")
"""Anything that looks like a placeholder, well-formed or not (``<|image_-1|>``, ``<|image_x|>``)."""

END_TOKEN_ID = 32007
"""``<|end|>``: ends every turn of the instruct models."""

ENDOFTEXT_TOKEN_ID = 32000
"""``<|endoftext|>``: the tokenizer's eos; the models may emit it instead of ``<|end|>``."""

DEFAULT_STOP_TOKEN_IDS = (END_TOKEN_ID, ENDOFTEXT_TOKEN_ID)
"""The configs name only eos id 2 (``</s>``), which the instruct models never emit."""


def placeholder_numbers(prompt: str, num_images: int) -> list[int]:
    """Image numbers of the prompt's placeholders in order, checked against ``num_images``.

    Each of 1..num_images must appear exactly once; anything else is a ``PromptError`` that
    says what is wrong, raised before any model work.
    """
    numbers: list[int] = []
    for match in _ANY_IMAGE_TAG.finditer(prompt):
        raw = match.group(1)
        if not raw.isdecimal() or not raw.isascii():
            raise PromptError(
                f"malformed image placeholder {match.group(0)!r}: placeholders are "
                "<|image_1|>, <|image_2|>, ... numbered from 1"
            )
        if len(raw) > 6 or int(raw) < 1:
            raise PromptError(
                f"image placeholder {match.group(0)!r} is out of range: placeholders are "
                f"numbered 1..N for N images (this prompt was given {num_images})"
            )
        numbers.append(int(raw))
    duplicates = sorted(n for n, count in Counter(numbers).items() if count > 1)
    if duplicates:
        tags = ", ".join(f"<|image_{n}|>" for n in duplicates)
        raise PromptError(
            f"{tags} appears more than once; each image has exactly one placeholder "
            "(use a new image number to show an image again)"
        )
    if sorted(numbers) != list(range(1, len(numbers) + 1)):
        raise PromptError(f"image placeholders must be numbered 1..N without gaps, got {sorted(numbers)}")
    if len(numbers) != num_images:
        raise PromptError(
            f"the prompt has {len(numbers)} image placeholder(s) but {num_images} image(s) "
            "were given; give one image per <|image_N|>"
        )
    return numbers


def _check_encodable(text: str) -> None:
    """Refuse text that has no UTF-8 form (lone surrogates such as ``"\\ud800"``, e.g. from
    ``surrogateescape`` decoding or a broken JSON ``\\u`` escape): the tokenizer cannot take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise PromptError(
            f"the prompt text contains the lone surrogate {bad!r} at position {exc.start}, which is "
            "not valid Unicode text (it has no UTF-8 encoding); remove it or decode the text "
            "with errors='replace'"
        ) from exc


class PromptTokenizer:
    """The checkpoint's tokenizer (``tokenizer.json``) plus the reference's placeholder rules."""

    def __init__(self, tokenizer: Tokenizer, bos_token_id: int = 1) -> None:
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id

    @classmethod
    def from_file(cls, path: str | Path) -> PromptTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode_text(self, text: str) -> list[int]:
        """One text chunk, with its leading ``<s>``."""
        _check_encodable(text)
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def encode(self, prompt: str, image_token_counts: Sequence[int]) -> list[int]:
        """Token ids of ``prompt``; image N (1-based) takes ``image_token_counts[N-1]`` ids ``-N``."""
        numbers = placeholder_numbers(prompt, len(image_token_counts))
        _check_encodable(prompt)
        chunks = PLACEHOLDER.split(prompt)[::2]  # split() interleaves the captured numbers
        ids = self.encode_text(chunks[0])
        for number, chunk in zip(numbers, chunks[1:], strict=True):
            ids.extend([-number] * image_token_counts[number - 1])
            ids.extend(self.encode_text(chunk))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_id(self, token: str) -> int | None:
        found = self.tokenizer.token_to_id(token)
        return None if found is None else int(found)
