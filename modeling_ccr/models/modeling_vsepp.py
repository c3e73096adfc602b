"""VSE++ (Faghri et al., BMVC 2018): one global embedding per image and per caption, cosine score."""

from __future__ import annotations

import torch

from .configuration_vsepp import VseppConfig
from .encoders import l2_normalize
from .modeling_matcher import GlobalEmbeddingScoring, MatcherPreTrainedModel


def mean_pool(items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """l2-normalised mean of the valid items: `(batch, n, D)`, mask `(batch, n)` -> `(batch, D)`."""
    weights = mask.to(items.dtype).unsqueeze(-1)
    return l2_normalize((items * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0))


class VseppModel(GlobalEmbeddingScoring, MatcherPreTrainedModel):
    """Score = cos(mean of an image's region embeddings, mean of a caption's word embeddings)."""

    config_class = VseppConfig

    def __init__(self, config: VseppConfig):
        super().__init__(config)
        self.post_init()

    def image_embedding(self, image_embeds: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
        """The l2-normalised mean `(batch, embed_dim)` of an image's region embeddings."""
        return mean_pool(image_embeds, region_mask)

    def text_embedding(self, text_embeds: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """The l2-normalised mean `(batch, embed_dim)` of a caption's word embeddings."""
        return mean_pool(text_embeds, word_mask)
