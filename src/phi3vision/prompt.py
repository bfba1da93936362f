"""``Prompt``: chat turns in the checkpoint's format, owning the ``<|image_N|>`` numbering.

    >>> p = Prompt(system="Be brief.").user("What is this?", images=["cat.png"])
    >>> print(p.render())
    <|system|>
    Be brief.<|end|>
    <|user|>
    <|image_1|>
    What is this?<|end|>
    <|assistant|>
    <BLANKLINE>

Prompts are immutable: ``user()`` and ``assistant()`` return a new prompt, so a chat can be
branched and an earlier prompt stays valid (and is a prefix of the later one, which lets the
model reuse its work).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import PromptError
from .processing.tokenization import placeholder_numbers

Role = Literal["system", "user", "assistant"]

_CONTROL_TOKENS = re.compile(r"<\|(?:system|user|assistant|end|endoftext|image_[^|<>]*)\|>")
"""Tokens that would change the chat's structure if they appeared inside a turn's text."""


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str
    images: tuple[Any, ...] = ()


_ANY_MARKER = re.compile(r"<\|[^|<>]*\|>")


def strip_chat_markers(text: str) -> str:
    """Text with every ``<|...|>`` marker removed, so that model output can go back into a
    prompt as a turn. Removal repeats until none is left: ``"<|<|end|>end|>"`` must not leave
    an ``<|end|>`` behind."""
    while True:
        stripped = _ANY_MARKER.sub("", text)
        if stripped == text:
            return text
        text = stripped


def _check_text(text: object, role: str) -> str:
    if not isinstance(text, str):
        raise PromptError(f"{role} text must be a str, got {type(text).__name__}")
    found = _CONTROL_TOKENS.search(text)
    if found:
        hint = (
            "pass images with images=[...]; Prompt numbers the placeholders itself"
            if found.group(0).startswith("<|image_")
            else "Prompt writes the chat markers itself; use Prompt.from_text for a raw prompt"
        )
        raise PromptError(f"{role} text contains {found.group(0)!r}: {hint}")
    return text


class Prompt:
    """A chat prompt: an optional system message, then user and assistant turns."""

    def __init__(self, system: str | None = None) -> None:
        self._turns: tuple[Turn, ...] = ()
        self._raw: str | None = None
        self._raw_images: tuple[Any, ...] = ()
        if system is not None:
            self._turns = (Turn("system", _check_text(system, "system")),)

    @classmethod
    def from_text(cls, raw: str, images: Sequence[Any] = ()) -> Prompt:
        """A raw prompt used exactly as given, e.g. the Phi-3 Cookbook's
        ``"<|user|>\\n<|image_1|>\\nWhat is this?<|end|>\\n<|assistant|>\\n"``.

        Its placeholders must be numbered 1..N with one image per number; a placeholder may
        repeat (the image goes at each place) and they may come in any order.
        """
        if not isinstance(raw, str):
            raise PromptError(f"a raw prompt must be a str, got {type(raw).__name__}")
        images = _as_image_tuple(images)
        placeholder_numbers(raw, len(images))
        prompt = cls()
        prompt._raw = raw
        prompt._raw_images = images
        return prompt

    def _extend(self, turn: Turn) -> Prompt:
        if self._raw is not None:
            raise PromptError("a prompt made with Prompt.from_text cannot be extended with turns")
        extended = Prompt()
        extended._turns = (*self._turns, turn)
        return extended

    def user(self, text: str, images: Sequence[Any] = ()) -> Prompt:
        """A new prompt with a user turn added; its images come before the text."""
        return self._extend(Turn("user", _check_text(text, "user"), _as_image_tuple(images)))

    def assistant(self, text: str) -> Prompt:
        """A new prompt with an assistant turn (a previous answer) added."""
        return self._extend(Turn("assistant", _check_text(text, "assistant")))

    @property
    def turns(self) -> tuple[Turn, ...]:
        return self._turns

    @property
    def images(self) -> list[Any]:
        """The images in placeholder order: image N is ``images[N - 1]``."""
        if self._raw is not None:
            return list(self._raw_images)
        return [image for turn in self._turns for image in turn.images]

    def render(self, add_generation_prompt: bool = True) -> str:
        """The prompt text with ``<|image_N|>`` placeholders, ending with ``<|assistant|>\\n``
        (unless the last turn is the assistant's or ``add_generation_prompt`` is False)."""
        if self._raw is not None:
            return self._raw
        parts: list[str] = []
        number = 0
        for turn in self._turns:
            parts.append(f"<|{turn.role}|>\n")
            for _ in turn.images:
                number += 1
                parts.append(f"<|image_{number}|>\n")
            parts.append(f"{turn.text}<|end|>\n")
        if add_generation_prompt and (not self._turns or self._turns[-1].role != "assistant"):
            parts.append("<|assistant|>\n")
        return "".join(parts)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"Prompt({self.render()!r}, images={len(self.images)})"


def _as_image_tuple(images: Sequence[Any] | None) -> tuple[Any, ...]:
    if images is None:
        return ()
    if isinstance(images, (str, bytes, bytearray)) or not isinstance(images, Sequence):
        # One image given where a list was expected: a common slip, accepted as a list of one.
        return (images,)
    return tuple(images)


def resolve_prompt(prompt: Prompt | str, images: Sequence[Any] | None) -> tuple[str, list[Any]]:
    """The text and images of what a caller passed: a ``Prompt`` (which carries its images) or a
    raw string with separate images. Placeholders are checked here, before any model work."""
    if isinstance(prompt, Prompt):
        if _as_image_tuple(images):  # not `if images:`, which is ambiguous for a numpy array
            raise PromptError("a Prompt carries its own images; do not pass images= as well")
        text, image_list = prompt.render(), prompt.images
    elif isinstance(prompt, str):
        text, image_list = prompt, list(_as_image_tuple(images))
    else:
        raise PromptError(f"prompt must be a Prompt or a str, got {type(prompt).__name__}")
    placeholder_numbers(text, len(image_list))
    return text, image_list


def batch_item(item: Prompt | str | tuple[str, Sequence[Any]]) -> tuple[Prompt | str, Sequence[Any] | None]:
    """A ``generate_batch`` item, a ``Prompt`` or a ``(raw_text, images)`` pair, as (prompt, images)."""
    if isinstance(item, tuple):
        if len(item) != 2:
            raise PromptError(
                f"a batch item given as a tuple must be (raw_text, images), got {len(item)} values"
            )
        return item[0], item[1]
    return item, None
