"""Prompt text with ``<|image_N|>`` placeholders -> token ids, as the reference processor does it.

The reference splits the prompt at the placeholders and tokenises every text chunk on its own,
each with its own start-of-sequence token (``<s>``, id 1), even an empty chunk. Image N then
takes ``num_image_tokens`` positions holding the id ``-N``; the model swaps those positions for
image features. A prompt with no placeholder is tokenised in one piece (one ``<s>``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from ..errors import CheckpointError, ContextLengthError, PromptError

PLACEHOLDER = re.compile(r"<\|image_(\d+)\|>")
"""A well-formed placeholder: ``<|image_N|>`` with N a decimal number."""

_ANY_IMAGE_TAG = re.compile(r"<\|image_([^|<>]*)\|>")
"""Anything that looks like a placeholder, well-formed or not (``<|image_-1|>``, ``<|image_x|>``)."""

END_TOKEN_ID = 32007
"""``<|end|>``: ends every turn of the instruct models."""

ENDOFTEXT_TOKEN_ID = 32000
"""``<|endoftext|>``: the tokenizer's eos; the models may emit it instead of ``<|end|>``."""

EOS_TOKEN_ID = 2
"""``</s>``: the eos the checkpoints' configs name; the instruct models rarely emit it."""

DEFAULT_STOP_TOKEN_IDS = (END_TOKEN_ID, ENDOFTEXT_TOKEN_ID, EOS_TOKEN_ID)
"""What generation stops on unless ``stop=`` says otherwise, as mlx-vlm does: the end of a
turn, the tokenizer's eos and the config's eos."""

MAX_PROMPT_POSITIONS = 1 << 20
"""Most positions a prompt may take before it is even compared with a model's context (the
largest Phi-3-vision context is 131072): bounds the memory of building its token ids."""


def placeholder_numbers(prompt: str, num_images: int) -> list[int]:
    """Image numbers of the prompt's placeholders in text order, checked against ``num_images``.

    Placeholders are ``<|image_N|>`` with N written in plain decimal digits, without leading
    zeros. Every image 1..num_images needs at least one placeholder, and no placeholder may
    name an image that was not given. A placeholder may appear more than once: that image's
    features then go at each place. Order does not matter: image N's features always go at
    ``<|image_N|>``. Anything else is a ``PromptError`` that says what is wrong, raised before
    any model work.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise PromptError(f"the number of images must be an int >= 0, got {num_images!r}")
    numbers: list[int] = []
    for match in _ANY_IMAGE_TAG.finditer(prompt):
        raw = match.group(1)
        if not raw.isdecimal() or not raw.isascii() or (raw.startswith("0") and raw != "0"):
            raise PromptError(
                f"malformed image placeholder {match.group(0)!r}: placeholders are "
                "<|image_1|>, <|image_2|>, ... numbered from 1, without leading zeros"
            )
        if len(raw) > 6 or int(raw) < 1:
            raise PromptError(
                f"image placeholder {match.group(0)!r} is out of range: placeholders are "
                f"numbered 1..N for N images (this prompt was given {num_images})"
            )
        numbers.append(int(raw))
    named = set(numbers)
    unknown = sorted(n for n in named if n > num_images)
    if unknown:
        raise PromptError(
            f"the prompt has a placeholder for image {unknown[0]} but {num_images} image(s) were "
            "given; give one image per number <|image_N|>, numbered 1..N without gaps"
        )
    if len(named) != num_images:
        missing = [n for n in range(1, num_images + 1) if n not in named]
        raise PromptError(
            f"the prompt has placeholders for {len(named)} image(s) but {num_images} image(s) were "
            f"given (no <|image_{missing[0]}|>); give one image per <|image_N|>"
        )
    return numbers


def check_positions(numbers: Sequence[int], image_token_counts: Sequence[int], text_length: int) -> None:
    """Refuse a prompt whose image positions alone would exceed :data:`MAX_PROMPT_POSITIONS`,
    before any list of that size is built: a repeated placeholder costs a whole image's
    positions each time, so a short text could otherwise ask for gigabytes of token ids."""
    image_positions = sum(image_token_counts[number - 1] for number in numbers)
    if text_length + image_positions > MAX_PROMPT_POSITIONS:
        raise ContextLengthError(
            f"the prompt's {len(numbers)} image placeholders would take {image_positions} positions, "
            f"over the limit of {MAX_PROMPT_POSITIONS} (far more than any model's context); "
            "use fewer placeholders"
        )


def _first_line(exc: BaseException) -> str:
    """The gist of a third-party error: the tokenizers library's messages can be long."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


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
    def from_file(cls, path: str | Path, vocab_size: int | None = None) -> PromptTokenizer:
        """The checkpoint's ``tokenizer.json``. A file the tokenizers library cannot read, or
        whose ids do not fit the model's ``vocab_size`` embedding rows, is a CheckpointError
        naming the file (the library itself raises a bare ``Exception``)."""
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a valid tokenizer file ({_first_line(exc)})") from exc
        loaded = cls(tokenizer)
        try:
            size = loaded.vocab_size
            loaded.encode_text("a")  # the pipeline runs (pre-tokenizer, model, post-processor)
        except Exception as exc:
            raise CheckpointError(f"{path}: the tokenizer does not work ({_first_line(exc)})") from exc
        if vocab_size is not None and size > vocab_size:
            raise CheckpointError(
                f"{path}: the tokenizer has {size} tokens but config.json's vocab_size is {vocab_size}; "
                "they come from different checkpoints"
            )
        return loaded

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode_text(self, text: str) -> list[int]:
        """One text chunk, with its leading ``<s>``."""
        _check_encodable(text)
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def encode(self, prompt: str, image_token_counts: Sequence[int]) -> list[int]:
        """Token ids of ``prompt``; image N (1-based) takes ``image_token_counts[N-1]`` ids ``-N``
        at each of its placeholders."""
        numbers = placeholder_numbers(prompt, len(image_token_counts))
        check_positions(numbers, image_token_counts, len(prompt))
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
