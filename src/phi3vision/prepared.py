"""``PreparedPrompt``: one prompt made ready for an engine, frozen and torch-free.

The front end (``VisionModel``) renders the prompt, reads its images and tokenizes it; an
engine turns this into model work. Pixel values and image cache keys are the engine's
business (``TorchEngine`` makes them when it needs them, see phi3vision.engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class PreparedPrompt:
    """``token_ids`` holds image N's positions as runs of ``-N``; ``image_sizes`` is the HD
    ``(height, width)`` of each image at ``num_crops``; ``image_token_counts`` the positions
    each image takes. ``text`` is the rendered prompt and ``sources`` describes what each image
    was made from (both for records and error messages)."""

    text: str
    token_ids: tuple[int, ...]
    num_crops: int
    image_token_counts: tuple[int, ...] = ()
    image_sizes: tuple[tuple[int, int], ...] = ()
    images: tuple[Image.Image, ...] = field(default=(), repr=False, compare=False)
    sources: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_image_tokens(self) -> int:
        """Prompt positions holding image features: a repeated placeholder counts at each place."""
        return sum(1 for token in self.token_ids if token < 0)
