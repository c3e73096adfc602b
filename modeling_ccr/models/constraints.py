"""Contrastive attention constraints CCR and CCS (docs/spec.md section 3; our formulation [R]).

The paper ("More Than Just Attention", Chen et al., WACV 2023) describes both constraints in words; its
exact equations were not available to us. This module implements the formulation documented in
docs/spec.md section 3 and docs/constraints.md, with every choice configurable.

A constraint sees a backbone only through `MatchedAttention`: the queries, keys and attention of the
matched (image i, caption i) pairs, their masks, and the backbone's own attention function for turning query-key
logits into attention (used when CCS recomputes attention over swapped keys).

Reduction: each term is a mean over the valid queries of a pair, SUMMED over the pairs of the batch,
like the base loss, so a weight means the same at any batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .encoders import NORM_EPS

AttentionFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MatchedAttention:
    """A backbone's attention on the matched pairs of a batch.

    queries: `(batch, m, D)`; query_mask: `(batch, m)` bool (False for padding); keys: `(batch, n, D)`;
        key_mask: `(batch, n)` bool;
    attention: `(batch, m, n)`, rows of valid queries sum to 1 over valid keys;
    attention_function: `(logits (..., m, n), query_mask (..., m), key_mask (..., n)) -> attention`, the
        backbone's own normalisation, e.g. SCAN's normalisation over queries then softmax over keys.
    constrained_queries: `(batch, m)` bool, the queries the constraints score (valid queries minus
        skipped words such as function words); None means every valid query.
    """

    queries: torch.Tensor
    query_mask: torch.Tensor
    keys: torch.Tensor
    key_mask: torch.Tensor
    attention: torch.Tensor
    attention_function: AttentionFunction
    constrained_queries: torch.Tensor | None = None

    @property
    def scored(self) -> torch.Tensor:
        return (
            self.query_mask
            if self.constrained_queries is None
            else self.query_mask & self.constrained_queries
        )


@dataclass
class ConstraintTerm:
    """One constraint's loss `()` (sum over pairs of the per-pair mean) and its hinge activation rate."""

    loss: torch.Tensor
    active_fraction: torch.Tensor


def relevance(queries: torch.Tensor, contents: torch.Tensor) -> torch.Tensor:
    """Cosine relevance R(q, c) over the last dim: `(..., D), (..., D) -> (...)`."""
    return F.cosine_similarity(queries, contents, dim=-1, eps=NORM_EPS)


ATTENDED_SET_NAMES = ("inverse_n", "threshold", "top_k")
CCS_MODES = ("swap_keys", "swap_query", "swap_image", "swap_within")


def attended_set(
    attention: torch.Tensor, key_mask: torch.Tensor, rule: str = "inverse_n", value: float = 0.0
) -> torch.Tensor:
    """The keys each query attends to: attention `(..., n)`, key_mask broadcastable to it -> `(..., n)` bool.

    The one attended-set rule of the package (CCS swaps these keys out; the attention metrics score them):
    - `inverse_n`: a >= 1 / n_valid, n_valid the query's valid keys (clamped at 1, so a row with no
      valid key attends to nothing rather than dividing by zero);
    - `threshold`: a >= `value`;
    - `top_k`: the `int(value)` largest weights over valid keys (ties broken by index).
    Padded keys are never attended.
    """
    valid = key_mask.expand_as(attention)
    if rule == "top_k":
        k = min(int(value), attention.shape[-1])
        top = attention.masked_fill(~valid, float("-inf")).topk(k, dim=-1).indices
        return torch.zeros_like(valid).scatter(-1, top, True) & valid
    if rule == "threshold":
        threshold = torch.full_like(attention[..., :1], value)
    elif rule == "inverse_n":
        threshold = 1.0 / valid.sum(dim=-1, keepdim=True).clamp_min(1).to(attention.dtype)
    else:
        raise ValueError(f"attended-set rule must be one of {ATTENDED_SET_NAMES}, got {rule!r}")
    return (attention >= threshold) & valid


def hinge_term(
    matched_relevance: torch.Tensor, contrast_relevance: torch.Tensor, mask: torch.Tensor, margin: float
) -> ConstraintTerm:
    """[margin - R(q, c) + R(q, c_contrast)]_+ over `(batch, m)` terms, mean per pair, summed over pairs."""
    hinge = (margin - matched_relevance + contrast_relevance).clamp_min(0) * mask
    per_pair = hinge.sum(dim=1) / mask.sum(dim=1).clamp_min(1)
    active = ((hinge > 0) & mask).sum() / mask.sum().clamp_min(1)
    return ConstraintTerm(per_pair.sum(), active.detach())


def ccr_loss(matched: MatchedAttention, margin: float) -> ConstraintTerm:
    """Contrastive Content Re-sourcing: attended content beats content re-sourced from ignored keys.

    abar_tj = (1 - a_tj) / sum_k (1 - a_tk) over valid keys; cbar_t = sum_j abar_tj k_j;
    term = [margin - R(q_t, c_t) + R(q_t, cbar_t)]_+.
    """
    key_mask = matched.key_mask.unsqueeze(1).to(matched.attention.dtype)
    content = matched.attention @ matched.keys
    ignored = (1 - matched.attention) * key_mask
    resourced = ignored / ignored.sum(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    resourced_content = resourced @ matched.keys
    return hinge_term(
        relevance(matched.queries, content),
        relevance(matched.queries, resourced_content),
        matched.scored & has_ignored_keys(matched),
        margin,
    )


def has_ignored_keys(matched: MatchedAttention) -> torch.Tensor:
    """`(batch, m)` True where re-sourcing is defined: the pair has at least two valid keys."""
    return (matched.key_mask.sum(dim=-1, keepdim=True) > 1).expand_as(matched.query_mask)


def ccs_loss(matched: MatchedAttention, margin: float, mode: str, rule: str, top_k: int) -> ConstraintTerm:
    """Contrastive Content Swapping: swapping the attended content out must lower the relevance.

    The contrast comes from the previous sample of the batch (pair i uses pair (i - 1) mod batch, a roll
    by one, so pair 0 takes the last pair):
    - swap_keys (default): the keys query t attends to are replaced by the keys at the same positions
      of the other sample; attention is recomputed over the swapped key set with the backbone's attention function,
      normalising over ALL of the pair's queries (per-query recomputation would flatten SCAN's
      attention); contrast = R(q_t, c~_t).
    - swap_query: contrast = R(q'_t, c_t), q'_t the other sample's query at the same position.
    - swap_image: contrast = R(q_t, c_t over the other sample's whole key set).
    - swap_within (ours, not the paper's): the contrast stays inside the matched pair: contrast =
      R(q_t, c_u), c_u the content attended by the next constrained query u of the same caption
      (cyclically), so each word's content must be more relevant to it than another word's content.
    """
    if mode != "swap_within" and matched.queries.shape[0] < 2:
        raise ValueError("CCS needs at least two pairs in a batch to swap content between them")
    content = matched.attention @ matched.keys
    matched_relevance = relevance(matched.queries, content)
    mask = matched.scored
    if mode == "swap_query":
        other_queries = matched.queries.roll(1, dims=0)
        contrast = relevance(other_queries, content)
        mask = mask & matched.query_mask.roll(1, dims=0)
    elif mode == "swap_image":
        contrast = relevance(matched.queries, recomputed_content(matched, *other_keys(matched)))
    elif mode == "swap_within":
        partner, has_partner = next_scored_query(mask)
        other_content = content.gather(1, partner.unsqueeze(-1).expand_as(content))
        contrast = relevance(matched.queries, other_content)
        mask = mask & has_partner
    else:
        attended = attended_set(matched.attention, matched.key_mask.unsqueeze(1), rule, top_k)
        contrast = relevance(matched.queries, swapped_content(matched, attended))
    return hinge_term(matched_relevance, contrast, mask, margin)


def next_scored_query(scored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query of `scored` `(batch, m)` bool, the index `(batch, m)` of the next scored query of
    its pair, wrapping around, and `(batch, m)` True where the pair has at least two scored queries."""
    m = scored.shape[1]
    positions = torch.arange(m, device=scored.device)
    # Scored positions first, each group in position order: sorted_positions[b, r] is the r-th scored query.
    sorted_positions = torch.where(scored, positions, positions + m).argsort(dim=1)
    count = scored.sum(dim=1, keepdim=True)
    rank = scored.long().cumsum(dim=1) - 1
    next_rank = torch.remainder(rank + 1, count.clamp_min(1))
    partner = sorted_positions.gather(1, next_rank.clamp_min(0))
    return partner, scored & (count > 1)


def other_keys(matched: MatchedAttention) -> tuple[torch.Tensor, torch.Tensor]:
    return matched.keys.roll(1, dims=0), matched.key_mask.roll(1, dims=0)


def swapped_content(matched: MatchedAttention, attended: torch.Tensor) -> torch.Tensor:
    """Content of each query over its own swapped key set: `(batch, m, D)`.

    Query t's key set is the pair's keys with the positions in `attended[:, t]` `(batch, m, n)` taken
    from the other sample; a swapped-in position that is padding there becomes padding (its content is
    removed). For each t the backbone's attention function runs over ALL queries of the pair against key set t and row
    t is kept, so normalisations over queries see the whole caption as in the unswapped attention.
    Swapped key sets are never built: their logits are picked from the own and the donor logits, and the
    content is split into its own and its donor part.
    """
    donor_keys, donor_mask = other_keys(matched)
    own_logits = matched.queries @ matched.keys.transpose(-1, -2)  # (batch, m, n)
    donor_logits = matched.queries @ donor_keys.transpose(-1, -2)
    swap = attended.unsqueeze(2)  # (batch, t, 1, n): key set t, all queries q
    logits = torch.where(swap, donor_logits.unsqueeze(1), own_logits.unsqueeze(1))  # (batch, t, q, n)
    key_mask = torch.where(attended, donor_mask.unsqueeze(1), matched.key_mask.unsqueeze(1))  # (batch, t, n)
    attention = matched.attention_function(logits, matched.query_mask.unsqueeze(1), key_mask)
    own_rows = attention.diagonal(dim1=1, dim2=2).permute(0, 2, 1)  # (batch, m, n): row t of set t
    from_donor = own_rows * attended
    return from_donor @ donor_keys + (own_rows - from_donor) @ matched.keys


def recomputed_content(matched: MatchedAttention, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Content `(batch, m, D)` of every query over one replacement key set `(batch, n, D)` per pair."""
    logits = matched.queries @ keys.transpose(-1, -2)
    attention = matched.attention_function(logits, matched.query_mask, key_mask)
    return attention @ keys


def constraint_terms(
    matched: MatchedAttention,
    ccr_margin: float | None,
    ccs_margin: float | None,
    ccs_mode: str = "swap_keys",
    rule: str = "inverse_n",
    top_k: int = 3,
) -> dict[str, ConstraintTerm]:
    """The enabled constraints (a None margin disables one) on one matched-attention view."""
    terms = {}
    if ccr_margin is not None:
        terms["ccr"] = ccr_loss(matched, ccr_margin)
    if ccs_margin is not None:
        terms["ccs"] = ccs_loss(matched, ccs_margin, ccs_mode, rule, top_k)
    return terms
