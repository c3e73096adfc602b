"""Two-stage retrieval: a global-embedding first stage shortlists, the cross-attention model re-ranks.

Exact cross-attention scoring of every image-caption pair is out of reach for large galleries (SGR/SAF on
COCO, millions of items). The first stage gives each item one l2-normalised vector (the embeddings of the model's trained
global head, `head_embeddings`, when it has one; else the VSE++-style mean of its own region and word
embeddings) and
shortlists, for every image, its `k` best captions and, for every caption, its `k` best images by inner
product (exact blocked matmul, or an `index.GalleryIndex`). The cross-attention model then scores exactly
the union of shortlisted pairs. Every other pair keeps its first-stage order, placed below every
re-ranked score, so ranks 1..k come from the cross-attention model and the ranks behind them from the
first stage. With k >= the gallery size this is exact scoring.

Re-ranking is batched (`rerank_pair_scores`): the shortlisted pairs of all queries are sorted by caption
length and image into rows (one image, up to `ROW_PAIRS` captions of about one length) and the rows into
tiles of about one cache-sized tile of the exact scorer, each tile scored in one pass on the model's
device. SCAN, BFAN and DAMSM score a tile with the exact scorer's own steps (`cross_attention`); SGR and
SAF with their own modules on the tile's pairs; any other matcher calls its `score_pairs` once per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..models.cross_attention import (
    CrossAttentionSpec,
    aggregate_relevance,
    attention_weights,
    cosine_relevance,
    focal_weights,
    gram,
)
from ..models.distributed import world_size_and_rank
from ..models.encoders import l2_normalize
from ..models.gallery_scoring import free_core_threads, tile_budget
from ..models.modeling_bfan import BfanModel
from ..models.modeling_damsm import DamsmModel
from ..models.modeling_matcher import GalleryScoring, eval_mode
from ..models.modeling_scan import ScanModel
from ..models.modeling_sgraf import SgrafPreTrainedModel


class RerankError(UserError, ValueError):
    """An invalid two-stage retrieval setting."""


# Most captions of one image in one row of a re-ranking tile: the image's regions are read once per row.
ROW_PAIRS = 16
# Captions whose lengths differ by less than this factor share rows (padding costs at most this share).
LENGTH_BAND = 2 ** (1 / 4)
# Re-ranking tiles hold this many times the exact scorer's cache-sized tile: each tile's fixed costs
# (gathering its pairs' embeddings, indexing) are spread over more pairs; measured 1.9-2.2x against
# 2.3-2.8x the cost of an exactly scored pair with 1x (docs/scoring.md).
RERANK_TILE_FACTOR = 4


def pooled_embeddings(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """l2-normalised mean of the valid fragments: `(items, n, D)`, mask `(items, n)` -> `(items, D)`."""
    weights = mask.unsqueeze(-1).to(embeds.dtype)
    pooled = (embeds * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def shard(n_items: int) -> slice:
    """This process's contiguous share of `n_items` under torch.distributed (all of them otherwise)."""
    world, rank = world_size_and_rank()
    size = -(-n_items // world)  # ceil: the last shard may be shorter or empty
    return slice(min(rank * size, n_items), min((rank + 1) * size, n_items))


def gather_shards(local: torch.Tensor, n_items: int) -> torch.Tensor:
    """Every process's `shard(n_items)` rows `(rows, ...)` concatenated into `(n_items, ...)`."""
    world, _ = world_size_and_rank()
    if world == 1:
        return local
    size = -(-n_items // world)
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat(gathered)[:n_items]


def shortlist(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """Indices `(n_queries, k)` of each query's `k` highest inner products with the gallery `(items, D)`
    (exact; query blocks keep the score block under about 64M entries)."""
    k = min(k, gallery.shape[0])
    if not len(queries):
        return torch.zeros(0, k, dtype=torch.long, device=queries.device)
    block = max(1, (1 << 26) // max(gallery.shape[0], 1))
    return torch.cat([(q @ gallery.T).topk(k, dim=1).indices for q in queries.split(block)])


# -- batched re-ranking -----------------------------------------------------------------------------------


def caption_lengths(word_mask: torch.Tensor) -> torch.Tensor:
    """`(n_captions,)` one past each caption's last valid token (its length once cut)."""
    positions = torch.arange(1, word_mask.shape[1] + 1, device=word_mask.device)
    return (word_mask * positions).amax(dim=1)


@dataclass
class RerankRows:
    """Pairs laid out as rows of one image and up to `width` captions, sorted so that consecutive rows
    have about one caption length and one fill.

    images `(n_rows,)` image index of each row; captions `(n_rows, width)` caption indices (unused slots
    repeat the row's first caption); pairs `(n_rows, width)` index of the slot's pair in the caller's
    pair list, -1 for unused slots; length `(n_rows,)` the row's longest caption; fill `(n_rows,)` used slots.
    """

    images: torch.Tensor
    captions: torch.Tensor
    pairs: torch.Tensor
    length: torch.Tensor
    fill: torch.Tensor


def rerank_rows(
    image_index: torch.Tensor, caption_index: torch.Tensor, lengths: torch.Tensor, width: int = ROW_PAIRS
) -> RerankRows:
    """Rows of the pairs (image_index[p], caption_index[p]) `(n_pairs,)`: pairs of one image and one
    length band (`LENGTH_BAND`) share rows of at most `width` captions; caption lengths `(n_captions,)`."""
    device = image_index.device
    pair_lengths = lengths[caption_index].clamp_min(1)
    band = torch.floor(torch.log(pair_lengths.double()) / math.log(LENGTH_BAND)).long()
    n_images = int(image_index.max()) + 1 if image_index.numel() else 1
    order = torch.argsort((band * n_images + image_index) * (lengths.max() + 1) + pair_lengths, stable=True)
    group_key = (band * n_images + image_index)[order]
    new_group = torch.ones_like(group_key, dtype=torch.bool)
    new_group[1:] = group_key[1:] != group_key[:-1]
    group_start = torch.cummax(torch.where(new_group, torch.arange(len(order), device=device), 0), 0).values
    slot = torch.arange(len(order), device=device) - group_start
    new_row = new_group | (slot % width == 0)
    row = torch.cumsum(new_row, 0) - 1
    n_rows = int(row[-1]) + 1 if len(order) else 0
    column = slot % width
    pairs = torch.full((n_rows, width), -1, dtype=torch.long, device=device)
    pairs[row, column] = order
    fill = (pairs >= 0).sum(dim=1)
    first = pairs[:, 0]
    captions = torch.where(pairs >= 0, caption_index[pairs.clamp_min(0)], caption_index[first][:, None])
    length = torch.zeros(n_rows, dtype=torch.long, device=device).scatter_reduce_(
        0, row, pair_lengths[order], "amax"
    )
    # Rows of one band together (one tile length), fullest first within it (one tile width).
    row_band = torch.floor(torch.log(length.double()) / math.log(LENGTH_BAND)).long()
    rows = torch.argsort(row_band * (width + 1) + (width - fill), stable=True)
    return RerankRows(image_index[first][rows], captions[rows], pairs[rows], length[rows], fill[rows])


def tiles_of(rows: RerankRows, n_keys: int, budget: int) -> list[tuple[slice, int, int]]:
    """(rows, caption length, width) of consecutive tiles holding about `budget` region-word entries."""
    tiles, start, n_rows = [], 0, len(rows.images)
    length, fill = rows.length.tolist(), rows.fill.tolist()
    while start < n_rows:
        # The first row of a tile has the tile's largest fill; lengths within a band differ by < 19%.
        width, tile_length, end = fill[start], length[start], start
        while end < n_rows:
            tile_length_next = max(tile_length, length[end])
            if end > start and (end - start + 1) * n_keys * width * tile_length_next > budget:
                break
            if fill[end] > width or tile_length_next > tile_length * LENGTH_BAND:
                break
            tile_length, end = tile_length_next, end + 1
        tiles.append((slice(start, end), tile_length, width))
        start = end
    return tiles


class PackedCaptions:
    """Per-token values of every caption packed without padding, gathered for a tile in one contiguous
    `index_select` (gathering rows of a padded, sliced tensor is several times slower).

    word_mask `(n_captions, n_words)`; `pack(values)` packs `(n_captions, n_words, ...)` values;
    `gather(packed, captions, length)` -> `(len(captions), length, ...)`, zero (False) past each caption.
    """

    def __init__(self, word_mask: torch.Tensor):
        device = word_mask.device
        self.lengths = caption_lengths(word_mask)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        captions = torch.repeat_interleave(torch.arange(len(self.lengths), device=device), self.lengths)
        positions = torch.arange(len(captions), device=device) - self.offsets[captions]
        # Row of each packed token in the (n_captions * n_words) flattening of the padded values.
        self.source = captions * word_mask.shape[1] + positions
        self.zero_row = len(captions)

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        flat = values.reshape(-1, *values.shape[2:]).contiguous()
        packed = torch.zeros((self.zero_row + 1, *flat.shape[1:]), dtype=flat.dtype, device=flat.device)
        torch.index_select(flat, 0, self.source, out=packed[:-1])
        return packed

    def gather(self, packed: torch.Tensor, captions: torch.Tensor, length: int) -> torch.Tensor:
        steps = torch.arange(length, device=captions.device)
        rows = torch.where(
            steps < self.lengths[captions, None], self.offsets[captions, None] + steps, self.zero_row
        )
        return torch.index_select(packed, 0, rows.reshape(-1)).view(len(captions), length, *packed.shape[1:])


class RowScorer:
    """Scores rows `(tile_rows,)` x `(tile_rows, width)` of a gallery for one matcher.

    `score(images, captions, length)` -> `(tile_rows, width)`: image indices `(tile_rows,)`, caption
    indices `(tile_rows, width)`, captions cut to `length` tokens.
    """

    def score(self, images: torch.Tensor, captions: torch.Tensor, length: int) -> torch.Tensor:
        raise NotImplementedError


class PerRowScorer(RowScorer):
    """Any matcher: one `score_pairs` call per row (one image against its row's captions)."""

    def __init__(self, model: GalleryScoring, image_embeds, region_mask, text_embeds, word_mask):
        self.model, self.images, self.region_mask = model, image_embeds, region_mask
        self.texts, self.word_mask = text_embeds, word_mask

    def score(self, images: torch.Tensor, captions: torch.Tensor, length: int) -> torch.Tensor:
        rows = []
        for image, row in zip(images.tolist(), captions, strict=True):
            rows.append(
                self.model.score_pairs(
                    self.images[image : image + 1],
                    self.region_mask[image : image + 1],
                    self.texts[row, :length],
                    self.word_mask[row, :length],
                )[0].float()
            )
        return torch.stack(rows)


def cross_attention_setting(model: GalleryScoring) -> tuple[tuple[str, ...], CrossAttentionSpec] | None:
    """The directions and attention of a matcher scored by `cross_attention.cross_attention_scores`, or
    None for other matchers (as each backbone's `score_pairs` sets them; tests check they agree)."""
    config = getattr(model, "config", None)
    if isinstance(model, ScanModel):
        spec = CrossAttentionSpec(
            config.lambda_softmax,
            config.attention_norm,
            aggregation=config.aggregation,
            lambda_lse=config.lambda_lse,
        )
        return (config.direction,), spec
    if isinstance(model, BfanModel):
        return tuple(config.directions), CrossAttentionSpec(
            config.lambda_softmax, config.attention_norm, focal=config.focal
        )
    if isinstance(model, DamsmModel):
        return ("t2i",), CrossAttentionSpec(
            config.gamma1, "softmax", aggregation="lse", lambda_lse=config.gamma2
        )
    return None


class CrossAttentionRowScorer(RowScorer):
    """SCAN, BFAN, DAMSM: a tile's rows with the exact scorer's steps (docs/scoring.md), keys first.

    t2i: logits `(rows, n_regions, width, length)` of each row's image against its captions (one batched
    matmul; the image's regions are read once per row). i2t: the transposed product viewed as
    `(rows * width, length, 1, n_regions)`, every caption a key item with its own image as the query.
    Norms and Gram matrices are computed once per item, as in exact scoring.
    """

    def __init__(self, directions, spec, image_embeds, region_mask, text_embeds, word_mask):
        self.directions, self.spec = directions, spec
        self.images = image_embeds * region_mask.unsqueeze(-1).to(image_embeds.dtype)
        self.region_mask = region_mask
        self.compute = torch.promote_types(self.images.dtype, torch.float32)
        self.image_norms = self.images.to(self.compute).norm(dim=-1)
        self.image_grams = gram(self.images.to(self.compute)) if "t2i" in directions else None
        self.packing = PackedCaptions(word_mask)
        self.word_mask = self.packing.pack(word_mask)
        # Padded and masked-out tokens are zero, as in exact scoring.
        self.texts = self.packing.pack(text_embeds) * self.word_mask.unsqueeze(-1).to(text_embeds.dtype)
        self.text_norms = self.texts.to(self.compute).norm(dim=-1)
        self.text_grams = None
        if "i2t" in directions:
            # Per-caption Gram matrices at the padded length; a tile reads their leading `length` block.
            texts = text_embeds * word_mask.unsqueeze(-1).to(text_embeds.dtype)
            self.text_grams = gram(texts.to(self.compute))

    def score(self, images: torch.Tensor, captions: torch.Tensor, length: int) -> torch.Tensor:
        spec, compute, packing = self.spec, self.compute, self.packing
        n_rows, width = captions.shape
        flat = captions.reshape(-1)
        regions = torch.index_select(self.images, 0, images)
        region_mask = self.region_mask[images]
        texts = packing.gather(self.texts, flat, length)
        word_mask = packing.gather(self.word_mask, flat, length)
        n_regions, dim = regions.shape[1:]
        # logits[row, region, slot, word] = <region, word> for the row's image and its slot's caption.
        logits = torch.bmm(regions, texts.view(n_rows, width * length, dim).transpose(1, 2))
        logits = logits.view(n_rows, n_regions, width, length).to(compute)
        total = 0.0
        if "t2i" in self.directions:
            query_mask = word_mask.view(n_rows, 1, width, length)
            weights = attention_weights(
                logits,
                query_mask if spec.norm == "softmax" else None,
                region_mask[:, :, None, None],
                spec.lambda_softmax,
                spec.norm,
            )
            if spec.focal is not None:
                weights = focal_weights(weights, region_mask[:, :, None, None], spec.focal)
            norms = packing.gather(self.text_norms, flat, length).view(n_rows, width, length)
            key_gram = torch.index_select(self.image_grams, 0, images)
            relevance = cosine_relevance(weights, logits, key_gram, norms)
            total = total + aggregate_relevance(
                relevance, query_mask[:, 0], spec.aggregation, spec.lambda_lse
            )
        if "i2t" in self.directions:
            # Keys are the words of each slot's caption, queries the regions of the row's image.
            transposed = logits.permute(0, 2, 3, 1).reshape(n_rows * width, length, 1, n_regions)
            query_mask = region_mask[:, None, :].expand(n_rows, width, n_regions).reshape(-1, 1, n_regions)
            key_mask = word_mask[:, :, None, None]
            weights = attention_weights(
                transposed,
                query_mask[:, None] if spec.norm == "softmax" else None,
                key_mask,
                spec.lambda_softmax,
                spec.norm,
            )
            if spec.focal is not None:
                weights = focal_weights(weights, key_mask, spec.focal)
            norms = (
                self.image_norms[images][:, None, :]
                .expand(n_rows, width, n_regions)
                .reshape(-1, 1, n_regions)
            )
            key_gram = torch.index_select(self.text_grams, 0, flat)[:, :length, :length]
            relevance = cosine_relevance(weights, transposed, key_gram, norms)
            scores = aggregate_relevance(relevance, query_mask, spec.aggregation, spec.lambda_lse)
            total = total + scores.view(n_rows, width)
        return total


class SgrafRowScorer(RowScorer):
    """SGR and SAF: the nodes [s_g, s_1..s_m] of a tile's pairs `(rows, width, 1 + length, sim_dim)` from
    the model's own modules (as `SgrafPreTrainedModel.similarity_nodes` on a pair), then its aggregation
    and score head; each side's pooling runs once per item."""

    def __init__(self, model: SgrafPreTrainedModel, image_embeds, region_mask, text_embeds, word_mask):
        model._check_region_slots(image_embeds)
        self.model, self.images, self.region_mask = model, image_embeds, region_mask
        self.pooled_images = model.region_pooling(image_embeds, region_mask)
        self.pooled_texts = model.word_pooling(text_embeds, word_mask)
        self.packing = PackedCaptions(word_mask)
        self.texts, self.word_mask = self.packing.pack(text_embeds), self.packing.pack(word_mask)

    def score(self, images: torch.Tensor, captions: torch.Tensor, length: int) -> torch.Tensor:
        model, packing = self.model, self.packing
        n_rows, width = captions.shape
        flat = captions.reshape(-1)
        regions = torch.index_select(self.images, 0, images)
        region_mask = self.region_mask[images]
        texts = packing.gather(self.texts, flat, length).view(n_rows, width, length, -1)
        word_mask = packing.gather(self.word_mask, flat, length).view(n_rows, width, length)
        logits = torch.einsum("rwmd,rnd->rwmn", texts, regions)
        attention = model.attention_function(logits, word_mask, region_mask[:, None, :])
        content = l2_normalize(torch.einsum("rwmn,rnd->rwmd", attention, regions))
        local = l2_normalize(model.local_similarity((content - texts).pow(2)))
        local = local * word_mask.unsqueeze(-1).to(local.dtype)
        difference = (self.pooled_images[images][:, None] - self.pooled_texts[captions]).pow(2)
        global_ = l2_normalize(model.global_similarity(difference))
        nodes = torch.cat([global_.unsqueeze(2), local], dim=2)
        node_mask = torch.nn.functional.pad(word_mask, (1, 0), value=True)
        return torch.sigmoid(model.score_head(model.aggregate(nodes, node_mask))).squeeze(-1).float()


def row_scorer(model: GalleryScoring, image_embeds, region_mask, text_embeds, word_mask) -> RowScorer:
    """The fastest exact row scorer for `model` (inputs as `model.similarity`)."""
    setting = cross_attention_setting(model)
    if setting is not None:
        return CrossAttentionRowScorer(*setting, image_embeds, region_mask, text_embeds, word_mask)
    if isinstance(model, SgrafPreTrainedModel):
        return SgrafRowScorer(model, image_embeds, region_mask, text_embeds, word_mask)
    return PerRowScorer(model, image_embeds, region_mask, text_embeds, word_mask)


@torch.no_grad()
def rerank_pair_scores(
    model: GalleryScoring,
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    image_index: torch.Tensor,
    caption_index: torch.Tensor,
    tile_elements: int | None = None,
) -> torch.Tensor:
    """The model's exact scores `(n_pairs,)` float32 of the pairs (image_index[p], caption_index[p]).

    Inputs as `model.similarity` (on the model's device); image_index, caption_index `(n_pairs,)` long.
    Pairs are scored in tiles of about `tile_elements` region-word entries (default `RERANK_TILE_FACTOR`
    times `tile_budget`).
    """
    scores = torch.empty(len(image_index), device=image_embeds.device)
    if not len(image_index):
        return scores
    rows = rerank_rows(image_index, caption_index, caption_lengths(word_mask))
    scorer = row_scorer(model, image_embeds, region_mask, text_embeds, word_mask)
    budget = tile_elements or RERANK_TILE_FACTOR * tile_budget(image_embeds.device)
    # On a shared CPU, as many threads as cores are free: a busy core stalls every small parallel region.
    with free_core_threads(image_embeds.device):
        for tile, length, width in tiles_of(rows, image_embeds.shape[1], budget):
            pairs = rows.pairs[tile, :width]
            tile_scores = scorer.score(rows.images[tile], rows.captions[tile, :width], length)
            used = pairs >= 0
            scores[pairs[used]] = tile_scores[used].float()
    return scores


# -- two-stage retrieval --------------------------------------------------------------------------------


def first_stage_embeddings(
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    global_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """l2-normalised first-stage vectors `(n_images, G)` and `(n_captions, G)`: the given global
    embeddings (e.g. a trained `GlobalHead`'s), else the mean-pooled fragment embeddings."""
    if global_embeds is None:
        return pooled_embeddings(image_embeds, region_mask), pooled_embeddings(text_embeds, word_mask)
    images, captions = global_embeds
    if images.shape[0] != image_embeds.shape[0] or captions.shape[0] != text_embeds.shape[0]:
        raise RerankError(
            f"global embeddings: expected {image_embeds.shape[0]} image and {text_embeds.shape[0]} caption "
            f"rows, found {images.shape[0]} and {captions.shape[0]}"
        )
    return torch.nn.functional.normalize(images.float(), dim=-1), torch.nn.functional.normalize(
        captions.float(), dim=-1
    )


# Items embedded by the global head per call: bounds the head's `(items, n, D)` intermediates (GPO sorts).
HEAD_BLOCK = 4096


def has_global_head(model: GalleryScoring) -> bool:
    """Whether `model` (or every member of an ensemble) carries a trained global head."""
    members = getattr(model, "members", None)
    if members is not None:
        return all(has_global_head(member) for member in members)
    return getattr(model, "global_head", None) is not None


@torch.no_grad()
def head_embeddings(
    model: GalleryScoring,
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The model's global-head embeddings of a gallery (inputs as `model.similarity`): images
    `(n_images, G)` and captions `(n_captions, G)`, l2-normalised; None when it has no head.

    An ensemble whose members all carry a head gets its members' embeddings concatenated and scaled by
    1/sqrt(members), so an inner product is the mean of the members' cosines (as its score is the mean
    of theirs); an ensemble where only some members carry one is a RerankError.
    """
    members = getattr(model, "members", None)
    if members is not None:
        carried = [has_global_head(member) for member in members]
        if not any(carried):
            return None
        if not all(carried):
            raise RerankError(
                f"ensemble global heads: every member needs one for a global-head first stage, found "
                f"{sum(carried)} of {len(carried)} members with one"
            )
        parts = [
            head_embeddings(member, images, region_mask, texts, word_mask)
            for member, images, texts in zip(
                members, model.split_embeds(image_embeds), model.split_embeds(text_embeds), strict=True
            )
        ]
        scale = 1 / math.sqrt(len(parts))
        return (
            torch.cat([p[0] for p in parts], dim=-1) * scale,
            torch.cat([p[1] for p in parts], dim=-1) * scale,
        )
    head = getattr(model, "global_head", None)
    if head is None:
        return None
    with eval_mode(head):
        images = torch.cat(
            [
                head.embed_images(image_embeds[block], region_mask[block].bool())
                for block in blocks(len(image_embeds))
            ]
        )
        captions = torch.cat(
            [
                head.embed_texts(text_embeds[block], word_mask[block].bool())
                for block in blocks(len(text_embeds))
            ]
        )
    return images.float(), captions.float()


def blocks(n_items: int, size: int = HEAD_BLOCK) -> list[slice]:
    """Consecutive slices of at most `size` items covering `n_items` (one empty slice for none)."""
    return [slice(start, start + size) for start in range(0, max(n_items, 1), size)]


def shortlist_of(gallery: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Exact search of `gallery` `(items, G)`: (queries, k) -> `(n_queries, k)` indices."""
    return lambda queries, k: shortlist(queries, gallery, k)


def shortlisted_pairs(
    images: torch.Tensor,
    captions: torch.Tensor,
    k: int,
    image_search: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """`(n_images, n_captions)` bool: each image's k best captions and each caption's k best images.

    images `(n_images, G)`, captions `(n_captions, G)`. image_search(queries, k) -> `(n_queries, k)`
    indices into the images (e.g. `GalleryIndex.search_indices`); exact inner products by default.
    Under torch.distributed each process searches for a shard of the queries; all get the same result.
    """
    # Under torch.distributed each process shortlists a shard of the queries and the shards are gathered.
    rows, columns = shard(images.shape[0]), shard(captions.shape[0])
    by_image = gather_shards(shortlist(images[rows], captions, k), images.shape[0])
    search = image_search or shortlist_of(images)
    found = gather_shards(search(captions[columns], k).to(images.device), captions.shape[0])
    rerank = torch.zeros(images.shape[0], captions.shape[0], dtype=torch.bool, device=images.device)
    rerank.scatter_(1, by_image, True)
    valid = found >= 0  # approximate indexes mark missing neighbours with -1
    rows = torch.arange(captions.shape[0], device=images.device)[:, None].expand_as(found)
    rerank[found[valid], rows[valid]] = True
    return rerank


@torch.no_grad()
def two_stage_similarity(
    model: GalleryScoring,
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    k: int,
    global_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    image_search: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """`(n_images, n_captions)` scores whose top k per image and per caption are the model's exact scores.

    Inputs as `model.similarity`. global_embeds: first-stage vectors `((n_images, G), (n_captions, G))`
    (see `first_stage_embeddings`); None: the model's global head's (`head_embeddings`) when it has one,
    else the mean-pooled fragments; image_search: how captions find their k images (`shortlisted_pairs`).
    Pairs outside both shortlists get their first-stage score mapped below every exact score, keeping the
    first stage's order among them. Under torch.distributed both stages are sharded across the processes
    and every process returns the full matrix.
    """
    if k < 1:
        raise RerankError(f"--rerank-k must be a positive number of candidates, got {k}")
    if global_embeds is None:
        global_embeds = head_embeddings(model, image_embeds, region_mask, text_embeds, word_mask)
    images, captions = first_stage_embeddings(
        image_embeds, region_mask, text_embeds, word_mask, global_embeds
    )
    first_stage = images @ captions.T
    rerank = shortlisted_pairs(images, captions, k, image_search)
    image_index, caption_index = rerank.nonzero(as_tuple=True)
    # Under torch.distributed each process scores a contiguous shard of the pairs (a block of images).
    pairs = shard(len(image_index))
    local = rerank_pair_scores(
        model, image_embeds, region_mask, text_embeds, word_mask, image_index[pairs], caption_index[pairs]
    )
    exact = gather_shards(local, len(image_index))
    scores = torch.empty_like(first_stage)
    scores[image_index, caption_index] = exact
    # First-stage scores (cosines in [-1, 1]) shifted strictly below the lowest exact score.
    below = exact.min() - 3.0 + first_stage
    return torch.where(rerank, scores, below)


def rerank_shortlists(
    model: GalleryScoring,
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    candidates: torch.Tensor,
    queries: str = "captions",
) -> torch.Tensor:
    """Exact scores `(n_queries, k)` of each query's candidates `(n_queries, k)`.

    queries "captions": query q is caption q, candidates index the images; "images": query q is image q,
    candidates index the captions. Negative candidates (missing neighbours) score -inf.
    """
    if queries not in ("captions", "images"):
        raise RerankError(f"queries must be 'captions' or 'images', got {queries!r}")
    query = torch.arange(candidates.shape[0], device=candidates.device)[:, None].expand_as(candidates)
    valid = candidates >= 0
    images, captions = (candidates, query) if queries == "captions" else (query, candidates)
    scores = torch.full(candidates.shape, float("-inf"), device=image_embeds.device)
    scores[valid] = rerank_pair_scores(
        model, image_embeds, region_mask, text_embeds, word_mask, images[valid], captions[valid]
    )
    return scores
