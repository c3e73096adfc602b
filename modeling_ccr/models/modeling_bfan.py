"""BFAN (Liu et al., ACM MM 2019): SCAN pre-attention, then focal re-assignment onto the relevant keys."""

from __future__ import annotations

from functools import partial

import torch

from .configuration_bfan import BfanConfig
from .constraints import MatchedAttention
from .cross_attention import aggregate_relevance, all_pairs_relevance, matched_view, scan_attention
from .encoders import NORM_EPS
from .modeling_matcher import MatcherPreTrainedModel


def focal_scores(attention: torch.Tensor, key_mask: torch.Tensor, focal: str) -> torch.Tensor:
    """F_tj of each key against the query's other keys: attention `(..., m, n)` (zero at padded keys),
    key_mask `(..., n)`.

    equal: F_tj = n a_tj - sum_k a_tk (n valid keys); prob: F_tj = sum_k (a_tj - a_tk) sqrt(a_tk).
    """
    if focal == "equal":
        n_valid = key_mask.sum(dim=-1, keepdim=True).unsqueeze(-1).to(attention.dtype)
        return n_valid * attention - attention.sum(dim=-1, keepdim=True)
    root = attention.clamp_min(0).sqrt()
    return attention * root.sum(dim=-1, keepdim=True) - (attention * root).sum(dim=-1, keepdim=True)


def focal_attention(
    logits: torch.Tensor,
    query_mask: torch.Tensor,
    key_mask: torch.Tensor,
    lambda_softmax: float,
    norm: str,
    focal: str,
) -> torch.Tensor:
    """a'_tj = H_tj a_tj / sum_k H_tk a_tk with H_tj = 1[F_tj > 0] (no gradient through H).

    a is SCAN's attention (`scan_attention`), shapes as there. The best key of a query is always kept, so
    a row whose keys all tie (F = 0 everywhere, e.g. one valid key) keeps its attention instead of vanishing.
    """
    attention = scan_attention(logits, query_mask, key_mask, lambda_softmax, norm)
    best = attention == attention.amax(dim=-1, keepdim=True)
    keep = ((focal_scores(attention, key_mask, focal) > 0) | best) & key_mask.unsqueeze(-2)
    focused = attention * keep.to(attention.dtype)
    return focused / focused.sum(dim=-1, keepdim=True).clamp_min(NORM_EPS)


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
    def attention_rule(self):
        config = self.config
        return partial(
            focal_attention,
            lambda_softmax=config.lambda_softmax,
            norm=config.attention_norm,
            focal=config.focal,
        )

    def score_pairs(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        total = 0.0
        for direction in self.config.directions:
            relevance, query_mask = all_pairs_relevance(
                image_embeds, region_mask, text_embeds, word_mask, direction, self.attention_rule
            )
            total = total + aggregate_relevance(relevance, query_mask, "avg", lambda_lse=1.0)
        return total

    def matched_attention(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
        constrained_words: torch.Tensor | None = None,
    ) -> list[MatchedAttention]:
        return [
            matched_view(
                image_embeds,
                region_mask,
                text_embeds,
                word_mask,
                direction,
                self.attention_rule,
                constrained_words,
            )
            for direction in self.config.directions
        ]
