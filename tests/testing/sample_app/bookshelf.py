"""bookshelf: read book covers and caption photos with a local Phi-3-vision model.

Only phi3vision's public API is used (``VisionModel``, ``Prompt``, the result types and
errors), so the same functions run on a real model, on ``tiny_vision_model`` and on a
``FakeVisionModel``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from phi3vision import OutputParseError, Prompt, VisionModel

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
CAPTION_REQUEST = "Write a one-line caption for this photo."


class BookInfo(BaseModel):
    title: str
    author: str


@dataclass(frozen=True)
class Caption:
    file: str
    text: str | None
    """None when the file could not be captioned; ``error`` says why."""
    error: str | None
    tokens: int


def book_info(model: VisionModel, cover: Any, *, max_new_tokens: int = 96) -> BookInfo | None:
    """Title and author from a book cover, or None when the model gives no valid answer (a
    shelf scanner should skip a cover it cannot read, not stop)."""
    try:
        return model.extract(cover, BookInfo, max_new_tokens=max_new_tokens, max_retries=1)
    except OutputParseError:
        return None


def caption_folder(model: VisionModel, folder: Path, *, max_new_tokens: int = 40) -> list[Caption]:
    """A caption for every image file in ``folder``, by file name. A file that cannot be read
    gets its error instead of failing the whole folder."""
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    prompts = [Prompt(system="Answer in one short line.").user(CAPTION_REQUEST, images=[f]) for f in files]
    results = model.generate_batch(prompts, max_new_tokens=max_new_tokens, stop=["\n", "<|end|>"])
    return [
        Caption(
            file=path.name,
            text=None if result.error else result.text.strip(),
            error=result.error.message if result.error else None,
            tokens=result.usage.total_tokens,
        )
        for path, result in zip(files, results, strict=True)
    ]


def live_answer(model: VisionModel, question: str, image: Any, *, max_new_tokens: int = 128) -> Iterator[str]:
    """The answer's text as it is made, for a chat window."""
    stream = model.stream(Prompt().user(question, images=[image]), max_new_tokens=max_new_tokens)
    try:
        yield from stream
    finally:
        stream.close()
