"""SCAN cross-attention (SPEC section 2): one implementation, used for all pairs and for matched pairs.

Notation: queries q_t (t = 1..m) attend to keys k_j (j = 1..n). In the t2i direction the queries are a
caption's words and the keys an image's regions; in i2t the roles swap. `logits[..., t, j] = <q_t, k_j>`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .constraints import AttentionRule, MatchedAttention
from .encoders import NORM_EPS

# SCAN clips negative query-key scores with this LeakyReLU slope before normalising them.
LEAKY_SLOPE = 0.1
# Floor under squared norms before sqrt, so padded (all-zero) queries get a zero, not a NaN, gradient.
SQUARED_NORM_FLOOR = 1e-12


def normalize_over_queries(logits: torch.Tensor, query_mask: torch.Tensor, norm: str) -> torch.Tensor:
    """Normalise raw scores over the query index t, separately for each key j.

    logits: `(..., m, n)`; query_mask: `(..., m)` bool. Padded queries never enter a norm or softmax.
    """
    mask = query_mask.unsqueeze(-1)
    if norm == "none":
        return logits
    if norm == "softmax":
        return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-2).masked_fill(~mask, 0.0)
    scores = F.leaky_relu(logits, LEAKY_SLOPE) if norm == "clipped_l2norm" else logits
    scores = scores * mask.to(scores.dtype)
    return scores / (scores.norm(dim=-2, keepdim=True) + NORM_EPS)


def scan_attention(
    logits: torch.Tensor,
    query_mask: torch.Tensor,
    key_mask: torch.Tensor,
    lambda_softmax: float,
    norm: str,
) -> torch.Tensor:
    """Attention a_tj = softmax_j(lambda1 * norm(s)_tj) over valid keys.

    logits: `(..., m, n)`; query_mask `(..., m)`, key_mask `(..., n)` bool (broadcastable).
    Returns `(..., m, n)`; rows of padded queries and columns of padded keys are exactly zero.
    """
    scores = lambda_softmax * normalize_over_queries(logits, query_mask, norm)
    scores = scores.masked_fill(~key_mask.unsqueeze(-2), float("-inf"))
    attention = torch.softmax(scores, dim=-1)
    return attention * query_mask.unsqueeze(-1).to(attention.dtype)


def attended_relevance(
    logits: torch.Tensor, attention: torch.Tensor, key_gram: torch.Tensor, query_norms: torch.Tensor
) -> torch.Tensor:
    """R_t = cos(q_t, c_t) with c_t = sum_j a_tj k_j, without building c_t.

    q_t . c_t = sum_j a_tj <q_t, k_j> reuses the logits and |c_t|^2 = a_t^T G a_t with G = K K^T.
    logits, attention: `(..., m, n)`; key_gram: `(..., n, n)`; query_norms: `(..., m)`. Returns `(..., m)`.
    """
    dot = (attention * logits).sum(dim=-1)
    content_sq_norm = (torch.matmul(attention, key_gram) * attention).sum(dim=-1)
    content_norm = content_sq_norm.clamp_min(SQUARED_NORM_FLOOR).sqrt()
    return dot / (query_norms * content_norm).clamp_min(NORM_EPS)


def aggregate_relevance(
    relevance: torch.Tensor, query_mask: torch.Tensor, aggregation: str, lambda_lse: float
) -> torch.Tensor:
    """Pool per-query relevance `(..., m)` over valid queries into one score `(...)`."""
    if aggregation in ("avg", "sum"):
        total = (relevance * query_mask.to(relevance.dtype)).sum(dim=-1)
        return total / query_mask.sum(dim=-1) if aggregation == "avg" else total
    masked = relevance.masked_fill(~query_mask, float("-inf"))
    if aggregation == "lse":
        return torch.logsumexp(lambda_lse * masked, dim=-1) / lambda_lse
    if aggregation == "max":
        return masked.amax(dim=-1)
    raise ValueError(f"unknown aggregation {aggregation!r}")


def gram(items: torch.Tensor) -> torch.Tensor:
    """Per-item Gram matrix `(batch, n, D)` -> `(batch, n, n)`."""
    return torch.matmul(items, items.transpose(-1, -2))


def all_pairs_relevance(
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    direction: str,
    attention_rule: AttentionRule,
) -> tuple[torch.Tensor, torch.Tensor]:
    """R_t = cos(q_t, c_t) of every query of every (image, caption) pair under an attention rule.

    image_embeds `(n_images, n_regions, D)`, region_mask `(n_images, n_regions)`, text_embeds
    `(n_captions, n_words, D)`, word_mask `(n_captions, n_words)`; attention_rule maps logits
    `(..., m, n)` and masks to attention (e.g. SCAN's). Returns relevance `(n_images, n_captions, m)` and
    its query mask (broadcastable to it): m = n_words for t2i, n_regions for i2t.
    Memory is O(n_images * n_captions * n_regions * n_words): callers block large galleries.
    """
    if direction == "t2i":
        logits = torch.einsum("cmd,ind->icmn", text_embeds, image_embeds)
        query_mask, key_mask = word_mask.unsqueeze(0), region_mask.unsqueeze(1)
        key_gram = gram(image_embeds).unsqueeze(1)
        query_norms = text_embeds.norm(dim=-1).unsqueeze(0)
    else:
        logits = torch.einsum("ind,cmd->icnm", image_embeds, text_embeds)
        query_mask, key_mask = region_mask.unsqueeze(1), word_mask.unsqueeze(0)
        key_gram = gram(text_embeds).unsqueeze(0)
        query_norms = image_embeds.norm(dim=-1).unsqueeze(1)
    attention = attention_rule(logits, query_mask, key_mask)
    return attended_relevance(logits, attention, key_gram, query_norms), query_mask


def scan_all_pairs(
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    *,
    direction: str,
    aggregation: str,
    lambda_softmax: float,
    lambda_lse: float,
    norm: str,
) -> torch.Tensor:
    """SCAN score of every image against every caption: `(n_images, n_captions)` (inputs as in
    `all_pairs_relevance`)."""
    rule = partial(scan_attention, lambda_softmax=lambda_softmax, norm=norm)
    relevance, query_mask = all_pairs_relevance(
        image_embeds, region_mask, text_embeds, word_mask, direction, rule
    )
    return aggregate_relevance(relevance, query_mask, aggregation, lambda_lse)


def matched_view(
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    direction: str,
    attention_rule: AttentionRule,
    constrained_words: torch.Tensor | None = None,
) -> MatchedAttention:
    """A backbone's attention on the matched pairs (image i, caption i) in one direction, for the
    constraints and `output_attentions`. constrained_words `(batch, n_words)` bool applies to word queries
    (t2i); in i2t every region query is constrained."""
    if direction == "t2i":
        queries, query_mask, keys, key_mask = text_embeds, word_mask, image_embeds, region_mask
    else:
        queries, query_mask, keys, key_mask = image_embeds, region_mask, text_embeds, word_mask
    logits = torch.matmul(queries, keys.transpose(-1, -2))
    return MatchedAttention(
        queries=queries,
        query_mask=query_mask,
        keys=keys,
        key_mask=key_mask,
        attention=attention_rule(logits, query_mask, key_mask),
        attention_rule=attention_rule,
        constrained_queries=constrained_words if direction == "t2i" else None,
    )
