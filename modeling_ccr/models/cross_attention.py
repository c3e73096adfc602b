"""SCAN cross-attention (docs/spec.md section 2): one implementation, used for all pairs and for matched pairs.

Notation: queries q_t (t = 1..m) attend to keys k_j (j = 1..n). In the t2i direction the queries are a
caption's words and the keys an image's regions; in i2t the roles swap.

Layout. The all-pairs scorer works on one GEMM of all keys against all queries, viewed as
`logits[key_item, j, query_item, t] = <k_j, q_t>`, i.e. `(..., n_keys, n_query_items, n_queries)`: the
norm over queries is then a reduction over the contiguous last axis, the softmax over keys a reduction over
axis -3, and the Gram product one batched matmul per key item. A matched pair is the case
`n_query_items = 1` (see `scan_attention`).

Attention weights are kept UNNORMALISED (w = exp(...), a = w / sum_j w): the relevance cos(q_t, c_t) and
BFAN's focal mask are invariant to a positive scale of a query's weights, so the softmax denominator is
never needed for scoring.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, partial

import torch
import torch.nn.functional as F

from .constraints import AttentionFunction, MatchedAttention
from .encoders import NORM_EPS
from .gallery_scoring import tile_budget, tile_shape

# SCAN clips negative query-key scores with this LeakyReLU slope before normalising them.
LEAKY_SLOPE = 0.1
# Width of the range of the normalised scores: an l2-normalised column lies in [-1, 1], a softmax in [0, 1].
NORMALIZED_RANGE = {"clipped_l2norm": 2.0, "l2norm": 2.0, "softmax": 1.0}
# A fixed shift is safe while lambda * range stays below this: the smallest weight exp(-40) ~ 4e-18 and
# its square (in |c_t|^2) are still normal fp32 (and bf16) numbers.
SAFE_EXP_RANGE = 40.0


def normalize_over_queries(logits: torch.Tensor, query_mask: torch.Tensor | None, norm: str) -> torch.Tensor:
    """Normalise raw scores over the query index t (last axis), separately for each key.

    logits: `(..., n_queries)`; query_mask: bool broadcastable to it, or None when padded queries already
    have zero logits (zero embeddings) and the norm is not "softmax". Padded queries never enter a norm.
    """
    if norm == "none":
        return logits
    if norm == "softmax":
        return torch.softmax(logits.masked_fill(~query_mask, float("-inf")), dim=-1).masked_fill(
            ~query_mask, 0.0
        )
    scores = F.leaky_relu(logits, LEAKY_SLOPE) if norm == "clipped_l2norm" else logits
    if query_mask is not None:
        scores = scores * query_mask.to(scores.dtype)
    return scores / (torch.linalg.vector_norm(scores, dim=-1, keepdim=True) + NORM_EPS)


def attention_weights(
    logits: torch.Tensor,
    query_mask: torch.Tensor | None,
    key_mask: torch.Tensor,
    lambda_softmax: float,
    norm: str,
) -> torch.Tensor:
    """Unnormalised SCAN attention w with a_tj = w_jt / sum_k w_kt = softmax_j(lambda1 * norm(s)_tj).

    logits `(..., n_keys, n_query_items, n_queries)`; query_mask bool broadcastable to
    `(..., 1, n_query_items, n_queries)` or None (see `normalize_over_queries`); key_mask bool
    broadcastable to `(..., n_keys, 1, 1)`. Returns weights shaped like logits, exactly zero at padded
    keys, at most 1. Computed in place on intermediates when no gradient is needed.
    """
    scores = normalize_over_queries(logits, query_mask, norm)
    # A fixed shift (the largest possible score) replaces the row max when the range is known and small
    # enough that no weight underflows: one reduction pass fewer, and exactly the same attention.
    fixed_shift = norm in NORMALIZED_RANGE and lambda_softmax * NORMALIZED_RANGE[norm] <= SAFE_EXP_RANGE
    inplace = scores is not logits and not (torch.is_grad_enabled() and scores.requires_grad)
    scores = scores.mul_(lambda_softmax) if inplace else scores * lambda_softmax
    padded_keys = torch.zeros(key_mask.shape, dtype=scores.dtype, device=scores.device)
    padded_keys.masked_fill_(~key_mask, float("-inf"))
    if fixed_shift:
        padded_keys -= lambda_softmax
        scores = scores.add_(padded_keys) if inplace else scores + padded_keys
    else:
        scores = scores + padded_keys
        # Clamped so that a query with no valid key gets zero weights instead of NaN.
        scores = scores - scores.amax(dim=-3, keepdim=True).clamp_min(torch.finfo(scores.dtype).min)
        inplace = not (torch.is_grad_enabled() and scores.requires_grad)
    return scores.exp_() if inplace else scores.exp()


def scan_attention(
    logits: torch.Tensor,
    query_mask: torch.Tensor,
    key_mask: torch.Tensor,
    lambda_softmax: float,
    norm: str,
    focal: str | None = None,
) -> torch.Tensor:
    """Attention a_tj = softmax_j(lambda1 * norm(s)_tj) over valid keys of matched pairs (or BFAN's focal
    re-assignment of it with `focal`).

    logits: `(..., m, n)`; query_mask `(..., m)`, key_mask `(..., n)` bool (broadcastable).
    Returns `(..., m, n)`; rows of padded queries and columns of padded keys are exactly zero.
    """
    # The matched pair as one key item against one query item: (..., n, 1, m); at least fp32 so that no
    # weight underflows.
    weights = attention_weights(
        logits.transpose(-1, -2).unsqueeze(-2).to(torch.promote_types(logits.dtype, torch.float32)),
        query_mask[..., None, None, :],
        key_mask[..., :, None, None],
        lambda_softmax,
        norm,
    )
    if focal is not None:
        weights = focal_weights(weights, key_mask[..., :, None, None], focal)
    attention = (weights / weights.sum(dim=-3, keepdim=True)).squeeze(-2).transpose(-1, -2)
    return (attention * query_mask.unsqueeze(-1).to(attention.dtype)).to(logits.dtype)


def focal_weights(weights: torch.Tensor, key_mask: torch.Tensor, focal: str) -> torch.Tensor:
    """BFAN's focal re-assignment H_tj w_jt with H_tj = 1[F_tj > 0] (no gradient through H).

    weights: unnormalised attention `(..., n_keys, n_query_items, n_queries)` (zero at padded keys);
    key_mask broadcastable to `(..., n_keys, 1, 1)`. With a = w / Z the sign of F is that of
    equal: n w_j - sum_k w_k (n valid keys); prob: w_j sum_k sqrt(w_k) - sum_k w_k sqrt(w_k).
    The best key of a query is always kept, so a query whose keys all tie (F = 0 everywhere, e.g. one
    valid key) keeps its attention instead of vanishing.
    """
    with torch.no_grad():
        if focal == "equal":
            n_valid = key_mask.sum(dim=-3, keepdim=True).to(weights.dtype)
            keep = n_valid * weights > weights.sum(dim=-3, keepdim=True)
        else:
            root = weights.sqrt()
            keep = weights * root.sum(dim=-3, keepdim=True) > (weights * root).sum(dim=-3, keepdim=True)
        keep |= weights == weights.amax(dim=-3, keepdim=True)
    return weights * keep.to(weights.dtype)


def cosine_relevance(
    weights: torch.Tensor, logits: torch.Tensor, key_gram: torch.Tensor, query_norms: torch.Tensor
) -> torch.Tensor:
    """R_t = cos(q_t, c_t) with c_t = sum_j a_tj k_j, without building c_t (the Gram trick).

    With any positive scale of a query's weights: q_t . c_t = sum_j w_jt <q_t, k_j> reuses the logits and
    |c_t|^2 = w_t^T G w_t with G = K K^T. weights, logits: `(key_items, n, query_items, m)`; key_gram
    `(key_items, n, n)`; query_norms broadcastable to `(query_items, m)`. Returns `(key_items, query_items, m)`.
    """
    key_items, n_keys, query_items, n_queries = weights.shape
    dot = torch.linalg.vecdot(weights, logits, dim=1)
    flat = weights.reshape(key_items, n_keys, query_items * n_queries)
    content = torch.bmm(key_gram, flat).view_as(weights)
    content_sq_norm = torch.linalg.vecdot(content, weights, dim=1)
    # The floor keeps sqrt's gradient finite; it is far below any real |c_t|^2 (weights are >= exp(-40)).
    tiny = torch.finfo(content_sq_norm.dtype).tiny
    denominator = query_norms * content_sq_norm.clamp_min(tiny).sqrt()
    return dot / denominator.clamp_min(tiny)


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


@dataclass(frozen=True)
class CrossAttentionSpec:
    """How a query attends and how its relevances pool: SCAN's attention (BFAN's with `focal`).

    lambda_softmax: lambda1; norm: normalisation over queries ("clipped_l2norm", "l2norm", "softmax",
    "none"); focal: None, "equal" or "prob"; aggregation: "avg", "sum", "lse" or "max"; lambda_lse: lambda2.
    """

    lambda_softmax: float
    norm: str
    focal: str | None = None
    aggregation: str = "avg"
    lambda_lse: float = 1.0


# Whether gradient-free calls of `cross_attention_scores` in this context run the compiled tile kernel.
_COMPILED_TILES: ContextVar[bool] = ContextVar("compiled_tiles", default=False)


@contextmanager
def compiled_tiles(enabled: bool = True) -> Iterator[None]:
    """Within the block, gradient-free all-pairs scoring runs `tile_scores` compiled by
    `torch.compile(dynamic=True)` (`similarity(..., compile=True)`; measured in docs/scoring.md)."""
    token = _COMPILED_TILES.set(enabled)
    try:
        yield
    finally:
        _COMPILED_TILES.reset(token)


@cache
def compiled_tile_scores():
    """`tile_scores` under `torch.compile(dynamic=True)`, built once: one compilation serves every tile shape."""
    return torch.compile(tile_scores, dynamic=True)


# Never traced by torch.compile (e.g. a compiled `score_pairs`): the tile loop's trip count depends on the
# gallery, so tracing would unroll one graph per tile; `compiled_tiles` compiles the tile kernel instead.
@torch.compiler.disable
def cross_attention_scores(
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    directions: Sequence[str],
    spec: CrossAttentionSpec,
    tile_elements: int | None = None,
) -> torch.Tensor:
    """Score of every image against every caption, summed over `directions` ("t2i", "i2t"):
    `(n_images, n_captions)`, differentiable.

    image_embeds `(n_images, n_regions, D)`, region_mask `(n_images, n_regions)` bool, text_embeds
    `(n_captions, n_words, D)`, word_mask `(n_captions, n_words)` bool. The nonlinear steps run in at least
    fp32 whatever the embeddings' dtype (the GEMM runs in the embeddings' dtype). tile_elements: entries per
    tile (default `tile_budget`). Memory beyond the inputs and the output is one tile's intermediates.
    """
    # Zero padded rows once, so padded queries have zero logits and need no mask in the norm over queries.
    images = image_embeds * region_mask.unsqueeze(-1).to(image_embeds.dtype)
    texts = text_embeds * word_mask.unsqueeze(-1).to(text_embeds.dtype)
    compute = torch.promote_types(images.dtype, torch.float32)
    sides = {
        "images": (images, region_mask, images.to(compute).norm(dim=-1)),
        "texts": (texts, word_mask, texts.to(compute).norm(dim=-1)),
    }
    grams = {}
    if "t2i" in directions:
        grams["images"] = gram(images.to(compute))
    if "i2t" in directions:
        grams["texts"] = gram(texts.to(compute))
    n_images, n_regions = region_mask.shape
    n_captions, n_words = word_mask.shape
    compiled = _COMPILED_TILES.get() and not torch.is_grad_enabled()
    score_tile = compiled_tile_scores() if compiled else tile_scores
    budget = tile_elements or tile_budget(images.device)
    image_tile, caption_tile = tile_shape(n_images, n_regions, n_captions, n_words, budget)
    rows = []
    for i in range(0, n_images, image_tile):
        tile_images = slice(i, i + image_tile)
        row = []
        for c in range(0, n_captions, caption_tile):
            tile_texts = slice(c, c + caption_tile)
            row.append(
                score_tile(
                    {
                        side: tuple(t[tile_images if side == "images" else tile_texts] for t in v)
                        for side, v in sides.items()
                    },
                    {side: g[tile_images if side == "images" else tile_texts] for side, g in grams.items()},
                    directions,
                    spec,
                    compute,
                )
            )
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)


def tile_scores(
    sides: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    grams: dict[str, torch.Tensor],
    directions: Sequence[str],
    spec: CrossAttentionSpec,
    compute: torch.dtype,
) -> torch.Tensor:
    """Scores of one tile `(tile_images, tile_captions)`: one GEMM, then each direction's per-pair steps.

    sides: "images" / "texts" -> (embeddings `(items, n, D)`, mask `(items, n)`, norms `(items, n)`);
    grams: the key side's Gram matrices `(items, n, n)` for each direction that needs them.
    """
    images, region_mask, image_norms = sides["images"]
    texts, word_mask, text_norms = sides["texts"]
    n_images, n_regions, dim = images.shape
    n_captions, n_words, _ = texts.shape
    total = 0.0
    # logits[image, region, caption, word]: keys-first layout for t2i; i2t reads its transpose.
    if "t2i" in directions:
        logits = torch.mm(images.reshape(-1, dim), texts.reshape(-1, dim).T)
        logits = logits.view(n_images, n_regions, n_captions, n_words).to(compute)
        total = total + direction_scores(logits, region_mask, word_mask, grams["images"], text_norms, spec)
    if "i2t" in directions:
        if "t2i" in directions:
            transposed = logits.permute(2, 3, 0, 1).contiguous()
        else:
            transposed = torch.mm(texts.reshape(-1, dim), images.reshape(-1, dim).T)
            transposed = transposed.view(n_captions, n_words, n_images, n_regions).to(compute)
        total = (
            total + direction_scores(transposed, word_mask, region_mask, grams["texts"], image_norms, spec).T
        )
    return total


def direction_scores(
    logits: torch.Tensor,
    key_mask: torch.Tensor,
    query_mask: torch.Tensor,
    key_gram: torch.Tensor,
    query_norms: torch.Tensor,
    spec: CrossAttentionSpec,
) -> torch.Tensor:
    """Scores `(key_items, query_items)` from logits `(key_items, n_keys, query_items, n_queries)` whose
    padded queries are zero; key_mask `(key_items, n_keys)`, query_mask `(query_items, n_queries)`."""
    # Only the softmax over queries needs the query mask; the l2 norms see zero logits at padded queries.
    mask = query_mask[None, None] if spec.norm == "softmax" else None
    key_mask_4d = key_mask[:, :, None, None]
    weights = attention_weights(logits, mask, key_mask_4d, spec.lambda_softmax, spec.norm)
    if spec.focal is not None:
        weights = focal_weights(weights, key_mask_4d, spec.focal)
    relevance = cosine_relevance(weights, logits, key_gram, query_norms)
    return aggregate_relevance(relevance, query_mask.unsqueeze(0), spec.aggregation, spec.lambda_lse)


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
    """SCAN score of every image against every caption in one direction: `(n_images, n_captions)` (inputs
    as in `cross_attention_scores`)."""
    spec = CrossAttentionSpec(lambda_softmax, norm, aggregation=aggregation, lambda_lse=lambda_lse)
    return cross_attention_scores(image_embeds, region_mask, text_embeds, word_mask, (direction,), spec)


def matched_view(
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    direction: str,
    attention_function: AttentionFunction,
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
        attention=attention_function(logits, query_mask, key_mask),
        attention_function=attention_function,
        constrained_queries=constrained_words if direction == "t2i" else None,
    )


def scan_attention_function(lambda_softmax: float, norm: str, focal: str | None = None) -> AttentionFunction:
    """SCAN's (or with `focal`, BFAN's) attention function on matched pairs, as the constraints see it."""
    return partial(scan_attention, lambda_softmax=lambda_softmax, norm=norm, focal=focal)
