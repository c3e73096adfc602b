"""SCAN: Stacked Cross Attention for image-text matching (Lee et al., ECCV 2018)."""

from __future__ import annotations

import torch

from .configuration_scan import ScanConfig
from .constraints import AttentionFunction
from .cross_attention import scan_all_pairs, scan_attention_function
from .gallery_scoring import tiled_pair_bytes
from .modeling_matcher import MatcherPreTrainedModel


class ScanModel(MatcherPreTrainedModel):
    """SCAN in one direction (`config.direction`): t2i (words attend to regions) or i2t.

    The score of a pair aggregates R_t = cos(q_t, c_t) over the queries (docs/spec.md section 2); the
    published best result averages a t2i-AVG and an i2t-LSE model (see the ensemble in evaluation).
    """

    config_class = ScanConfig

    def __init__(self, config: ScanConfig):
        super().__init__(config)
        self.post_init()

    @property
    def attention_direction(self) -> str:
        return self.config.direction

    @property
    def attention_function(self) -> AttentionFunction:
        """SCAN attention on matched pairs, as the constraints recompute it."""
        return scan_attention_function(self.config.lambda_softmax, self.config.attention_norm)

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
        return scan_all_pairs(
            image_embeds,
            region_mask,
            text_embeds,
            word_mask,
            direction=config.direction,
            aggregation=config.aggregation,
            lambda_softmax=config.lambda_softmax,
            lambda_lse=config.lambda_lse,
            norm=config.attention_norm,
        )
