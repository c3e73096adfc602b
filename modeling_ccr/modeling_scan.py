"""SCAN: Stacked Cross Attention for image-text matching (Lee et al., ECCV 2018)."""

from __future__ import annotations

import torch

from .configuration_scan import ScanConfig
from .cross_attention import matched_attention, matched_queries_and_keys, scan_all_pairs
from .modeling_matcher import MatcherPreTrainedModel


class ScanModel(MatcherPreTrainedModel):
    """SCAN in one direction (`config.direction`): t2i (words attend to regions) or i2t.

    The score of a pair aggregates R_t = cos(q_t, c_t) over the queries (SPEC section 2); the
    published best result averages a t2i-AVG and an i2t-LSE model (see the ensemble in evaluation).
    """

    config_class = ScanConfig

    def __init__(self, config: ScanConfig):
        super().__init__(config)
        self.post_init()

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

    def matched_attention_maps(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        queries, query_mask, keys, key_mask = matched_queries_and_keys(
            image_embeds, region_mask, text_embeds, word_mask, self.config.direction
        )
        return matched_attention(
            queries, query_mask, keys, key_mask, self.config.lambda_softmax, self.config.attention_norm
        )
