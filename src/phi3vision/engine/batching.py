"""Batching rules: which rows may share a forward pass, and how they are padded.

``rope_groups`` is pure; ``left_padded`` builds the tensors of one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

RopeRegime = Literal["short", "long", "crossing"]


def rope_regime(prompt_length: int, max_new_tokens: int, original_context: int) -> RopeRegime:
    """Which rotary factors a row's positions get. The checkpoints' LongRoPE uses its short
    factors while a forward pass's longest row fits the original 4096 positions and its long
    factors past them, for every row of the batch at once. Rows that stay short, rows that
    start long, and rows that cross the boundary while decoding must not share a batch."""
    if prompt_length + max_new_tokens <= original_context:
        return "short"
    if prompt_length > original_context:
        return "long"
    return "crossing"


def rope_groups(prompt_lengths: Sequence[int], max_new_tokens: int, original_context: int) -> list[list[int]]:
    """Indices of rows split into batches that give one-by-one results: short rows together,
    long rows together, each crossing row alone (its switch to long factors is its own)."""
    groups: dict[str, list[int]] = {}
    singles: list[list[int]] = []
    for index, length in enumerate(prompt_lengths):
        regime = rope_regime(length, max_new_tokens, original_context)
        if regime == "crossing":
            singles.append([index])
        else:
            groups.setdefault(regime, []).append(index)
    return [*groups.values(), *singles]


def left_padded(
    embeds: Sequence[torch.Tensor],
    token_ids: Sequence[Sequence[int]],
    past: int,
    length: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch padded on the left to ``length`` positions: the embeddings ``(B, length - past,
    hidden)`` of the positions after ``past`` (``embeds[row]`` is ``(L_row - past, hidden)``),
    the attention mask ``(B, length)`` and the ids ``(B, length)`` (``-1`` on the padding)."""
    import torch

    batch = torch.zeros(len(embeds), length - past, embeds[0].shape[-1], dtype=embeds[0].dtype, device=device)
    mask = torch.zeros(len(embeds), length, dtype=torch.long, device=device)
    ids = torch.full((len(embeds), length), -1, dtype=torch.long, device=device)
    for row, (embed, row_ids) in enumerate(zip(embeds, token_ids, strict=True)):
        batch[row, batch.shape[1] - embed.shape[0] :] = embed
        mask[row, length - len(row_ids) :] = 1
        ids[row, length - len(row_ids) :] = torch.tensor(row_ids, dtype=torch.long, device=device)
    return batch, mask, ids
