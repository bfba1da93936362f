"""Phi-3-vision = transformers' ``Phi3ForCausalLM`` + our ``ImageEmbedding``.

Token ids follow the reference convention: image N of a prompt occupies positions holding
``-N``. ``embed`` swaps those positions for image N's projected features; everything else is
the plain Phi-3 language model (with the checkpoint's longrope rotary scaling).

Pure torch: no I/O, no device policy.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._quiet import quiet_loggers

# transformers imports its torchao quantizer whenever torchao is installed (the quant extra).
# A CPU-only torchao then logs that its CUDA kernels are missing, and torch logs that torchao
# registers enums the old way: lines about the install, not about any call, that would
# otherwise greet every user of a plain call.
with quiet_loggers("torchao", "torch.utils._pytree"):
    from transformers import Phi3ForCausalLM

from .config import Phi3VConfigs
from .image_embedding import ImageEmbedding

# transformers renamed the KV-cache argument ``past_key_values`` to ``cache`` (5.2x, the old name
# warns on every call and goes in 5.40): pass it under the name the installed version takes.
_CACHE_ARGUMENT = (
    "cache" if "cache" in inspect.signature(Phi3ForCausalLM.forward).parameters else "past_key_values"
)


class Phi3VForCausalLM(nn.Module):
    def __init__(self, configs: Phi3VConfigs) -> None:
        super().__init__()
        self.configs = configs
        self.language_model = Phi3ForCausalLM(configs.text)
        self.image_embedding = ImageEmbedding(configs.image_embedding, configs.vision)

    @property
    def vocab_size(self) -> int:
        return int(self.configs.text.vocab_size)

    def image_features(
        self, pixel_values: torch.Tensor | Sequence[torch.Tensor], image_sizes: torch.Tensor
    ) -> list[torch.Tensor]:
        """Projected features of each image, ``(num_image_tokens_i, hidden)``, from padded pixel
        values ``(n_images, views, 3, 336, 336)`` or a list of each image's views."""
        return self.image_embedding(list(pixel_values), image_sizes)

    def embed(
        self,
        input_ids: torch.Tensor,
        image_features: Sequence[Mapping[int, torch.Tensor]] = (),
    ) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, L, hidden)`` embeddings with the images' features in place.

        ``image_features[b][n]`` is the feature tensor of image n of row b; the positions
        holding ``-n`` in that row are one run of that length per placeholder of image n.
        Every image whose id occurs in ``input_ids`` must have features.
        """
        embed_tokens = self.language_model.get_input_embeddings()
        embeds = embed_tokens(input_ids.clamp(min=0))  # (B, L, hidden)
        for row in range(input_ids.shape[0]):
            features = image_features[row] if row < len(image_features) else {}
            numbers = sorted({-int(i) for i in input_ids[row].unique() if i < 0})
            for number in numbers:
                positions = (input_ids[row] == -number).nonzero().squeeze(-1)  # (num_image_tokens,)
                feats = features.get(number)
                if feats is None or feats.shape[0] == 0 or positions.numel() % feats.shape[0]:
                    raise ValueError(
                        f"image {number} of row {row} occupies {positions.numel()} positions but has "
                        f"{'no' if feats is None else feats.shape[0]} features"
                    )
                # A placeholder used k times holds k runs of the image's positions, in order.
                repeats = positions.numel() // feats.shape[0]
                embeds[row, positions] = feats.to(embeds.dtype).repeat(repeats, 1)
        return embeds

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> Any:
        """Run the language model on embeddings; returns transformers' CausalLMOutputWithPast
        with the logits of the last ``logits_to_keep`` positions (0: all)."""
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=_last_positions(inputs_embeds, logits_to_keep),
            **{_CACHE_ARGUMENT: past_key_values},
        )


def _last_positions(inputs_embeds: torch.Tensor, count: int) -> int | torch.Tensor:
    """``logits_to_keep`` for the last ``count`` positions, as indices rather than a count.

    Given a count, transformers hands ``lm_head`` a strided view of the hidden states
    ``(B, count, hidden)``; over such a view a bfloat16 linear on a CPU copies its whole weight
    first (188 MiB for Phi-3's lm_head, on every prefill). Indexing with a tensor gives
    ``lm_head`` a compact copy of those rows instead.
    """
    length = inputs_embeds.shape[1]
    if count <= 0 or count >= length:
        return 0  # every position: the hidden states themselves, no view
    return torch.arange(length - count, length, device=inputs_embeds.device)  # (count,)
