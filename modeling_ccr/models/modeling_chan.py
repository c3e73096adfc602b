"""CHAN (Pan et al., CVPR 2023): each query keeps only its single most similar key (hard assignment coding),
then the per-query similarities are pooled into the score."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from transformers import initialization as init

from .configuration_chan import ChanConfig
from .constraints import AttentionFunction
from .cross_attention import aggregate_relevance
from .encoders import l2_normalize
from .modeling_dvsa import best_region_attention
from .modeling_matcher import MatcherPreTrainedModel

# CHAN's pooling names -> the shared aggregation's ("softmax" is CHAN's own).
SHARED_AGGREGATIONS = {"mean": "avg", "sum": "sum", "max": "max", "lse": "lse"}


def pool_assigned(values: torch.Tensor, mask: torch.Tensor, pooling: str, temperature: float) -> torch.Tensor:
    """Pool per-query similarities `(..., m)` over the valid queries (mask broadcastable to values) -> `(...)`.

    CHAN's LSE is log sum exp(s / tau), NOT rescaled by tau as SCAN's (`aggregate_relevance`) is.
    """
    values = values.masked_fill(~mask, 0.0)  # padded queries carry -inf from the max over no key
    if pooling == "softmax":
        weights = torch.softmax(values.masked_fill(~mask, float("-inf")) / temperature, dim=-1)
        return (weights * values).sum(dim=-1)
    if pooling not in SHARED_AGGREGATIONS:
        raise ValueError(f"unknown CHAN pooling {pooling!r}")
    pooled = aggregate_relevance(values, mask, SHARED_AGGREGATIONS[pooling], 1.0 / temperature)
    return pooled / temperature if pooling == "lse" else pooled


def hard_assignment_scores(
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    directions: tuple[str, ...],
    pooling: str,
    temperature: float,
) -> torch.Tensor:
    """CHAN's score of every image against every caption, summed over `directions`: `(n_images, n_captions)`.

    image_embeds `(n_images, n_regions, D)`, region_mask `(n_images, n_regions)` bool, text_embeds
    `(n_captions, n_words, D)`, word_mask `(n_captions, n_words)` bool. s_jt = <v_j, w_t>; t2i scores word
    t by max_j s_jt over real regions, i2t region j by max_t s_jt over real words; then `pool_assigned`.
    """
    n_images, n_regions, dim = image_embeds.shape
    n_captions, n_words, _ = text_embeds.shape
    sims = torch.mm(image_embeds.reshape(-1, dim), text_embeds.reshape(-1, dim).T)
    sims = sims.view(n_images, n_regions, n_captions, n_words).transpose(1, 2)  # (images, captions, r, w)
    pair_mask = region_mask[:, None, :, None] & word_mask[None, :, None, :]
    sims = sims.masked_fill(~pair_mask, float("-inf"))
    total = 0.0
    if "t2i" in directions:
        best_region = sims.amax(dim=2)  # (images, captions, words)
        total = total + pool_assigned(best_region, word_mask[None], pooling, temperature)
    if "i2t" in directions:
        best_word = sims.amax(dim=3)  # (images, captions, regions)
        total = total + pool_assigned(best_word, region_mask[:, None], pooling, temperature)
    return total


def soft_assignment(
    logits: torch.Tensor, query_mask: torch.Tensor, key_mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """softmax over valid keys of logits / temperature (CHAN's soft coding): logits `(..., m, n)`, query_mask
    `(..., m)`, key_mask `(..., n)` -> `(..., m, n)`, zero rows at padded queries."""
    weights = torch.softmax(logits.masked_fill(~key_mask.unsqueeze(-2), float("-inf")) / temperature, dim=-1)
    return weights * query_mask.unsqueeze(-1).to(logits.dtype)


class ChanRegionSelfAttention(nn.Module):
    """CHAN's region refinement: x + MultiheadAttention(LayerNorm(x)), padded regions never attended.

    regions `(batch, n_regions, D)`, mask `(batch, n_regions)` bool -> `(batch, n_regions, D)`.
    """

    def __init__(self, embed_dim: int, n_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.attention = nn.MultiheadAttention(embed_dim, n_heads, batch_first=True)

    def reset_parameters(self) -> None:
        # PyTorch's own initialisation of these layers (what CHAN trains from), through transformers' init.
        init.ones_(self.norm.weight)
        init.zeros_(self.norm.bias)
        init.xavier_uniform_(self.attention.in_proj_weight)
        init.zeros_(self.attention.in_proj_bias)
        init.kaiming_uniform_(self.attention.out_proj.weight, a=5**0.5)
        init.zeros_(self.attention.out_proj.bias)

    def forward(self, regions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normed = self.norm(regions)
        attended = self.attention(normed, normed, normed, key_padding_mask=~mask, need_weights=False)[0]
        return regions + attended


class ChanModel(MatcherPreTrainedModel):
    """CHAN: score = pooled best-key similarities (`hard_assignment_scores`) of l2-normalised region and
    word embeddings; regions optionally refined by a self-attention block."""

    config_class = ChanConfig

    def __init__(self, config: ChanConfig):
        super().__init__(config)
        self.region_attention = (
            ChanRegionSelfAttention(config.embed_dim, config.self_attention_heads)
            if config.region_self_attention
            else None
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ChanRegionSelfAttention):
            module.reset_parameters()

    @property
    def attention_direction(self) -> str:
        return self.config.directions[0]

    @property
    def constrained_directions(self) -> tuple[str, ...]:
        return self.config.directions

    @property
    def attention_function(self) -> AttentionFunction:
        """The assignment the constraints see (`config.constraint_assignment`, ours): the one-hot hard
        assignment (DVSA's `best_region_attention`, first key on ties; no gradient through the choice, the
        constraints' gradient reaches the embeddings through the relevances) or the soft one."""
        if self.config.constraint_assignment == "hard":
            return best_region_attention
        return partial(soft_assignment, temperature=self.config.assignment_temperature)

    def get_image_features(self, region_features: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
        """Region embeddings `(batch, n_regions, embed_dim)`, zero at padded regions."""
        self._check_region_features(region_features, region_mask)
        region_mask = region_mask.bool()
        regions = self.region_encoder.projection(region_features)
        if self.region_attention is not None:
            regions = self.region_attention(regions, region_mask)
        if self.config.normalize_regions:
            regions = l2_normalize(regions)
        return regions * region_mask.unsqueeze(-1).to(regions.dtype)

    def score_pairs(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        config = self.config
        return hard_assignment_scores(
            image_embeds,
            region_mask.bool(),
            text_embeds,
            word_mask.bool(),
            config.directions,
            config.pooling,
            config.pooling_temperature,
        )
