"""DAMSM (Xu et al., AttnGAN, CVPR 2018): word-region attention similarity.

s_tj = <q_t, k_j>; s is softmax-normalised over the words t for each region j; a_tj = softmax_j(gamma1
s_tj); c_t = sum_j a_tj k_j; R_t = cos(q_t, c_t); R(Q, D) = (1/gamma2) log sum_t exp(gamma2 R_t). This is
the SCAN t2i computation with a softmax normalisation over words and LSE pooling, so it reuses it.
"""

from __future__ import annotations

import torch

from .configuration_damsm import DamsmConfig
from .constraints import AttentionFunction
from .cross_attention import scan_all_pairs, scan_attention_function
from .modeling_matcher import MatcherPreTrainedModel


class DamsmModel(MatcherPreTrainedModel):
    """DAMSM's word-level image-text similarity (its sentence-level term is not included)."""

    config_class = DamsmConfig

    def __init__(self, config: DamsmConfig):
        super().__init__(config)
        self.post_init()

    @property
    def attention_function(self) -> AttentionFunction:
        """t2i attention with the softmax normalisation over words, inverse temperature gamma1."""
        return scan_attention_function(self.config.gamma1, "softmax")

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
            direction="t2i",
            aggregation="lse",
            lambda_softmax=config.gamma1,
            lambda_lse=config.gamma2,
            norm="softmax",
        )
