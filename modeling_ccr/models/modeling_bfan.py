"""BFAN (Liu et al., ACM MM 2019): SCAN pre-attention, then focal re-assignment onto the relevant keys."""

from __future__ import annotations

import torch

from .configuration_bfan import BfanConfig
from .constraints import AttentionFunction
from .cross_attention import CrossAttentionSpec, cross_attention_scores, scan_attention_function
from .gallery_scoring import tiled_pair_bytes
from .modeling_matcher import MatcherPreTrainedModel


class BfanModel(MatcherPreTrainedModel):
    """BFAN: score = mean over words of the t2i relevance + mean over regions of the i2t relevance, both
    with focal attention (or one direction only, `config.direction`)."""

    config_class = BfanConfig

    def __init__(self, config: BfanConfig):
        super().__init__(config)
        self.post_init()

    @property
    def attention_direction(self) -> str:
        return self.config.directions[0]

    @property
    def constrained_directions(self) -> tuple[str, ...]:
        return self.config.directions

    @property
    def attention_function(self) -> AttentionFunction:
        """Focal attention on matched pairs (`cross_attention.scan_attention` with `focal`)."""
        return scan_attention_function(
            self.config.lambda_softmax, self.config.attention_norm, self.config.focal
        )

    def pair_scoring_bytes(self, n_regions: int, n_words: int, embed_dim: int) -> int:
        return tiled_pair_bytes(n_regions, n_words)

    def score_pairs(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        config = self.config
        spec = CrossAttentionSpec(config.lambda_softmax, config.attention_norm, focal=config.focal)
        # Both directions share each tile's GEMM of regions against words.
        return cross_attention_scores(
            image_embeds, region_mask, text_embeds, word_mask, config.directions, spec
        )
