"""DVSA (Karpathy and Fei-Fei, CVPR 2015): S = sum over words t of max over regions j of <k_j, q_t>."""

from __future__ import annotations

import torch

from .configuration_dvsa import DvsaConfig
from .constraints import AttentionFunction
from .cross_attention import aggregate_relevance
from .modeling_matcher import MatcherPreTrainedModel


def best_region_attention(
    logits: torch.Tensor, query_mask: torch.Tensor, key_mask: torch.Tensor
) -> torch.Tensor:
    """DVSA's hard alignment as attention: one-hot on each query's best valid key.

    logits `(..., m, n)`, query_mask `(..., m)`, key_mask `(..., n)`; rows of padded queries are zero.
    """
    best = logits.masked_fill(~key_mask.unsqueeze(-2), float("-inf")).argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(logits).scatter(-1, best, 1.0)
    return one_hot * query_mask.unsqueeze(-1).to(logits.dtype)


class DvsaModel(MatcherPreTrainedModel):
    """Each word aligns to its best region; the pair's score pools those best dot products over words.

    With l2-normalised embeddings the dot products are cosines. The constraints see the hard alignment as
    one-hot t2i attention (CCR then asks the best region to beat the mean of the others).
    """

    config_class = DvsaConfig

    def __init__(self, config: DvsaConfig):
        super().__init__(config)
        self.post_init()

    @property
    def attention_function(self) -> AttentionFunction:
        """The hard alignment (`best_region_attention`), the attention the constraints see."""
        return best_region_attention

    def score_pairs(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        logits = torch.einsum("cmd,ind->icmn", text_embeds, image_embeds)
        padded_regions = ~region_mask[:, None, None, :]
        best = logits.masked_fill(padded_regions, float("-inf")).amax(dim=-1)  # (images, captions, words)
        return aggregate_relevance(best, word_mask.unsqueeze(0), self.config.aggregation, lambda_lse=1.0)
