"""Full-gallery evaluation: encode a split once, score every image-caption pair in blocks, rank.

Never imported by the models. Ensembles average the similarity matrices of their members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..data.collator import pad_regions, tokenize_captions
from ..data.pairs import ImageFeatures, caption_table
from ..errors import InvalidValueError
from ..metrics.attention import (
    AttendedSetSpec,
    attended_regions,
    gold_regions,
    summarize_precision_recall,
    word_precision_recall,
)
from ..metrics.eccv import PROTOCOL as ECCV_PROTOCOL
from ..metrics.eccv import check_eccv_split, corpus_eccv_metrics
from ..metrics.retrieval import evaluate_retrieval
from ..models.modeling_matcher import MatcherPreTrainedModel, eval_mode
from ..text.word_alignment import DEFAULT_WORD_COMBINE, combine_word_rows, word_token_positions
from .two_stage import first_stage_embeddings, head_embeddings, two_stage_similarity


def pad_to_length(items: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad `(batch, n, D)` items and `(batch, n)` mask to `length` along n."""
    pad = length - items.shape[1]
    return torch.nn.functional.pad(items, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad))


def concat_padded(chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(items.shape[1] for items, _ in chunks)
    padded = [pad_to_length(items, mask, length) for items, mask in chunks]
    return torch.cat([p[0] for p in padded]), torch.cat([p[1] for p in padded])


@torch.no_grad()
def encode_images(
    model: MatcherPreTrainedModel, dataset: datasets.Dataset, batch_size: int = 128, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Region embeddings of every image row: `(n_images, max_regions, D)` and mask `(n_images, max_regions)`."""
    images = ImageFeatures(dataset)
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="encode images", disable=not progress):
        rows = [images[i] for i in range(start, min(start + batch_size, len(images)))]
        features, mask = pad_regions([r["features"] for r in rows], [r["image_index"] for r in rows])
        features, mask = features.to(model.device), mask.to(model.device)
        chunks.append((model.get_image_features(features, mask), mask))
    return concat_padded(chunks)


@torch.no_grad()
def encode_captions(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    captions: Sequence[str],
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Word embeddings of captions: `(n_captions, max_tokens, D)` and mask `(n_captions, max_tokens)` bool."""
    chunks = []
    for start in tqdm(range(0, len(captions), batch_size), desc="encode captions", disable=not progress):
        input_ids, attention_mask = tokenize_captions(tokenizer, captions[start : start + batch_size])
        input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
        chunks.append((model.get_text_features(input_ids, attention_mask), attention_mask.bool()))
    return concat_padded(chunks)


@dataclass
class CorpusScores:
    """A gallery's scores: similarity `(n_images, n_captions)` on the CPU and caption_to_image
    `(n_captions,)`; with two-stage retrieval also the first stage's own scores `(n_images, n_captions)`,
    what it was ("global_head" or "mean_pooled") and, with an index, the index's description."""

    similarity: torch.Tensor
    caption_to_image: np.ndarray
    first_stage: torch.Tensor | None = None
    first_stage_source: str | None = None
    index: dict = field(default_factory=dict)


@torch.no_grad()
def corpus_scores(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    progress: bool = False,
    rerank_k: int | None = None,
    index_dir: str | Path | None = None,
) -> CorpusScores:
    """Score every image of `dataset` against every caption (see `CorpusScores`).

    rerank_k: two-stage retrieval (`two_stage.two_stage_similarity`): the first stage is the model's
    global head when it has one (`two_stage.head_embeddings`), else its mean-pooled fragments, and the
    model re-ranks each image's and each caption's k best first-stage candidates. index_dir (with
    rerank_k): captions find their images through a `GalleryIndex` saved in that folder beside the
    first-stage embeddings, and reused while those are unchanged. Under torch.distributed both stages
    (or the exact scoring's images) are sharded across processes and gathered, so every process returns
    the full matrix.
    """
    with eval_mode(model):
        captions, caption_to_image = caption_table(dataset)
        image_embeds, region_mask = encode_images(model, dataset, progress=progress)
        text_embeds, word_mask = encode_captions(model, tokenizer, captions, progress=progress)
        gallery = (image_embeds, region_mask, text_embeds, word_mask)
        if rerank_k is None:
            return CorpusScores(sharded_similarity(model, *gallery).cpu(), caption_to_image)
        head = head_embeddings(model, *gallery)
        images, texts = first_stage_embeddings(*gallery, head)
        image_search, index = None, {}
        if index_dir is not None:
            image_search, index = first_stage_index(index_dir, images, texts, rerank_k)
        similarity = two_stage_similarity(
            model, *gallery, rerank_k, global_embeds=(images, texts), image_search=image_search
        )
    return CorpusScores(
        similarity.cpu(),
        caption_to_image,
        first_stage=(images @ texts.T).cpu(),
        first_stage_source="global_head" if head is not None else "mean_pooled",
        index=index,
    )


def first_stage_index(
    folder: str | Path, images: torch.Tensor, captions: torch.Tensor, k: int
) -> tuple[Callable[[torch.Tensor, int], torch.Tensor], dict]:
    """The captions' search for their k images through a `GalleryIndex` of `images` `(n_images, G)`
    saved in `folder` beside the first-stage embeddings (reused when they are unchanged), and its
    description: kind, lists, probes, folder and the shortlist's recall@k against brute force over the
    caption queries `(n_captions, G)`. Under torch.distributed the first process builds and saves it,
    the others then read it."""
    from .index import GalleryIndex, save_embeddings, shortlist_recall

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    first = not distributed or torch.distributed.get_rank() == 0
    if first:
        save_embeddings(folder, images, captions)
        index = GalleryIndex.load_or_build(folder, images)
    if distributed:
        torch.distributed.barrier()
    if not first:
        index = GalleryIndex.load_or_build(folder, images)
    description = {
        "kind": index.parameters.kind,
        "n_lists": index.parameters.n_lists,
        "n_probe": index.parameters.n_probe,
        "folder": str(folder),
        f"shortlist_recall@{min(k, len(images))}": shortlist_recall(index, images, captions, k),
    }
    return index.search_indices, description


@torch.no_grad()
def corpus_similarity(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    progress: bool = False,
    rerank_k: int | None = None,
    index_dir: str | Path | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Score every image of `dataset` against every caption: `(n_images, n_captions)` and caption_to_image
    (`corpus_scores`' similarity)."""
    scores = corpus_scores(model, tokenizer, dataset, progress, rerank_k, index_dir)
    return scores.similarity, scores.caption_to_image


def sharded_similarity(
    model: MatcherPreTrainedModel,
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
) -> torch.Tensor:
    """`model.similarity` of the whole gallery; under torch.distributed each process scores a contiguous
    shard of the images against every caption and the shards are all-gathered into the full matrix."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return model.similarity(image_embeds, region_mask, text_embeds, word_mask)
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    shard = -(-image_embeds.shape[0] // world)  # ceil: the last shard may be shorter or empty
    rows = slice(rank * shard, (rank + 1) * shard)
    local = model.similarity(image_embeds[rows], region_mask[rows], text_embeds, word_mask)
    padded = torch.zeros(shard, text_embeds.shape[0], device=local.device, dtype=local.dtype)
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat(gathered)[: image_embeds.shape[0]]


def evaluate_matchers(
    models: Sequence[MatcherPreTrainedModel],
    tokenizers: Sequence[PreTrainedTokenizerBase],
    dataset: datasets.Dataset,
    protocol: str = "full",
    captions_per_image: int | None = 5,
    progress: bool = False,
    rerank_k: int | None = None,
    eccv_subset: bool = False,
    index_dir: str | Path | None = None,
) -> dict:
    """Retrieval metrics of one model, or of an ensemble (the mean of the members' similarity matrices).

    rerank_k: score by two-stage retrieval (see `corpus_scores`), recorded in the metrics with the first
    stage's own retrieval metrics under `metrics["first_stage"]` (its "source": "global_head" or
    "mean_pooled"; the mean of the models' first-stage scores for several). index_dir: the first stage's
    index folder (one subfolder per model for several), described under `metrics["first_stage_index"]`.
    protocol "eccv": R@K of the whole split, and ECCV Caption / CxC metrics of the same similarity matrix
    under `metrics["eccv"]` (`metrics.eccv`; eccv_subset: score a split that is part of the COCO 5K test)."""
    if len(models) != len(tokenizers) or not models:
        raise ValueError(
            f"need one tokenizer per model, got {len(models)} models and {len(tokenizers)} tokenizers"
        )
    if protocol == ECCV_PROTOCOL:
        check_eccv_split(dataset, eccv_subset)  # before the scoring, which takes long on the 5K test
    if index_dir is not None and rerank_k is None:
        raise InvalidValueError(
            f"a first-stage index folder (--index {index_dir}) needs two-stage retrieval: give --rerank-k K too"
        )
    scored = []
    for position, (model, tokenizer) in enumerate(zip(models, tokenizers, strict=True)):
        folder = index_dir
        if index_dir is not None and len(models) > 1:
            folder = Path(index_dir) / f"model_{position}"  # each model has its own first stage
        scored.append(corpus_scores(model, tokenizer, dataset, progress, rerank_k, folder))
    caption_to_image = scored[0].caption_to_image
    similarity = torch.stack([scores.similarity for scores in scored]).mean(dim=0)
    metrics = evaluate_retrieval(
        similarity,
        caption_to_image,
        protocol="full" if protocol == ECCV_PROTOCOL else protocol,
        check_captions_per_image=captions_per_image,
    )
    if protocol == ECCV_PROTOCOL:
        metrics["eccv"] = corpus_eccv_metrics(similarity, dataset, caption_to_image, eccv_subset)
    metrics["ensemble_size"] = len(models)
    if rerank_k is not None:
        metrics["rerank_k"] = rerank_k
        # The first stage alone, as a retrieval model of its own (the global head's recall).
        first_stage = torch.stack([scores.first_stage for scores in scored]).mean(dim=0)
        metrics["first_stage"] = {
            "source": "+".join(sorted({scores.first_stage_source for scores in scored})),
            **evaluate_retrieval(
                first_stage,
                caption_to_image,
                protocol="full" if protocol == ECCV_PROTOCOL else protocol,
                check_captions_per_image=captions_per_image,
            ),
        }
        if index_dir is not None:
            indexes = [scores.index for scores in scored]
            metrics["first_stage_index"] = indexes[0] if len(indexes) == 1 else indexes
    return metrics


# Flickr30k Entities types whose phrases have no object box to attend to (docs/spec.md section 4).
UNGROUNDED_PHRASE_TYPES = ("scene", "notvisual")


def word_region_attended(
    attentions: torch.Tensor,
    region_mask: torch.Tensor,
    word_mask: torch.Tensor,
    direction: str,
    rule: AttendedSetSpec,
) -> torch.Tensor:
    """Attended sets as `(batch, n_tokens, n_regions)` bool, whatever the attention direction.

    t2i attention `(batch, n_tokens, n_regions)`: word t attends region j if a_tj passes the rule over
    regions. i2t attention `(batch, n_regions, n_tokens)`: region j attends word t if a_jt passes the
    rule over words; the word's attended set is the regions that attend it (our reading for i2t).
    """
    if direction == "t2i":
        return attended_regions(attentions, region_mask.unsqueeze(1).expand_as(attentions), rule)
    attended = attended_regions(attentions, word_mask.unsqueeze(1).expand_as(attentions), rule)
    return attended.transpose(1, 2) & region_mask.unsqueeze(1)


def word_level_attention(
    attention: torch.Tensor, positions: Sequence[Sequence[int]], direction: str, combine: str
) -> torch.Tensor:
    """One pair's attention with its tokens replaced by the words of `split_words(caption)`.

    t2i `(n_tokens, n_regions)` -> `(n_words, n_regions)`: a word's row combines its tokens' rows;
    i2t `(n_regions, n_tokens)` -> `(n_regions, n_words)`: a word's column combines its tokens' columns.
    `positions[w]`: word w's tokens (`word_alignment.word_token_positions`); combine: "mean" or "max".
    """
    if direction == "t2i":
        return combine_word_rows(attention, positions, combine)
    return combine_word_rows(attention.T, positions, combine).T


def has_grounding(dataset: datasets.Dataset) -> bool:
    """Whether a split has what the attention metrics need: region boxes and grounded phrases."""
    return "phrases" in dataset.column_names and "boxes" in dataset.column_names


def grounded_pairs(dataset: datasets.Dataset) -> list[tuple[int, int, list[dict]]]:
    """(image row, caption index, grounded phrases) of every caption that has a phrase with a box."""
    if not has_grounding(dataset):
        raise ValueError(
            f"attention metrics need 'boxes' and 'phrases' columns; the dataset has {dataset.column_names}"
        )
    pairs = []
    for row, caption_phrases in enumerate(dataset["phrases"]):
        for caption_index, phrases in enumerate(caption_phrases):
            usable = [
                p
                for p in phrases
                if p["boxes"] and not any(t in p["phrase_type"].split("/") for t in UNGROUNDED_PHRASE_TYPES)
            ]
            if usable:
                pairs.append((row, caption_index, usable))
    return pairs


@torch.no_grad()
def matched_pair_attentions(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    features: Sequence,
    captions: Sequence[str],
    image_indices: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's attention on pairs (features[i], captions[i]), on the CPU: attentions
    `(batch, n_queries, n_keys)`, region_mask `(batch, n_regions)` and attention_mask `(batch, n_tokens)`."""
    region_features, region_mask = pad_regions(list(features), image_indices)
    input_ids, attention_mask = tokenize_captions(tokenizer, list(captions), image_indices=image_indices)
    output = model(
        region_features.to(model.device),
        region_mask.to(model.device),
        input_ids.to(model.device),
        attention_mask.to(model.device),
        output_attentions=True,
    )
    return output.attentions.float().cpu(), region_mask, attention_mask


@dataclass
class GroundedWordAttention:
    """One grounded caption's word-level attention on its own image.

    words: t2i `(n_words, n_regions)`, i2t `(n_regions, n_words)`; word_mask `(n_words,)` (words with a
    token left after truncation); region_mask `(n_regions,)`; boxes `(n_regions, 4)` pixels.
    """

    row: int
    phrases: list[dict]
    words: torch.Tensor
    word_mask: torch.Tensor
    region_mask: torch.Tensor
    boxes: torch.Tensor

    def phrase_words(self, phrase: dict) -> list[int]:
        """The phrase's word positions that were not truncated away."""
        span = range(phrase["first_word"], phrase["first_word"] + phrase["num_words"])
        return [w for w in span if w < len(self.word_mask) and self.word_mask[w]]


@torch.no_grad()
def grounded_word_attentions(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    batch_size: int = 64,
    word_combine: str = DEFAULT_WORD_COMBINE,
    progress: bool = False,
    max_pairs: int | None = None,
) -> Iterator[GroundedWordAttention]:
    """The model's word-level attention on every grounded caption of a split (or the first `max_pairs`),
    with its image's boxes and the caption's grounded phrases, computed in batches."""
    direction = model.attention_direction
    images = ImageFeatures(dataset)
    region_boxes = dataset.with_format("torch", columns=["boxes"])
    captions = dataset["captions"]
    pairs = grounded_pairs(dataset)[:max_pairs]
    for start in tqdm(range(0, len(pairs), batch_size), desc="attention metrics", disable=not progress):
        batch = pairs[start : start + batch_size]
        rows = [row for row, _, _ in batch]
        texts = [captions[r][c] for r, c, _ in batch]
        attentions, region_mask, attention_mask = matched_pair_attentions(
            model, tokenizer, [images[r]["features"] for r in rows], texts, rows
        )
        alignments = word_token_positions(tokenizer, texts)
        for b, (row, _, phrases) in enumerate(batch):
            boxes = region_boxes[row]["boxes"].float()
            n_regions, n_tokens = len(boxes), int(attention_mask[b].sum())
            pair_attention = (
                attentions[b, :n_tokens, :n_regions]
                if direction == "t2i"
                else attentions[b, :n_regions, :n_tokens]
            )
            yield GroundedWordAttention(
                row=row,
                phrases=phrases,
                words=word_level_attention(pair_attention, alignments[b], direction, word_combine),
                word_mask=torch.tensor([bool(tokens) for tokens in alignments[b]]),
                region_mask=region_mask[b, :n_regions],
                boxes=boxes,
            )


@torch.no_grad()
def attention_metrics(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    rule: AttendedSetSpec | None = None,
    batch_size: int = 64,
    progress: bool = False,
    word_combine: str = DEFAULT_WORD_COMBINE,
) -> dict:
    """Attention P/R/F1 of a model's matched-pair attention on a split with boxes and phrases.

    Phrase words map to their tokens through the tokenizer's offsets (`word_alignment`); a word split into
    several tokens gets the `word_combine` ("mean" or "max") of their attention rows.
    """
    if not model.config.has_cross_attention:
        raise ValueError(f"{type(model).__name__} has no cross-attention: attention metrics do not apply")
    rule = rule or AttendedSetSpec()
    direction = model.attention_direction
    precisions, recalls = [], []
    with eval_mode(model):
        for pair in grounded_word_attentions(model, tokenizer, dataset, batch_size, word_combine, progress):
            attended = word_region_attended(
                pair.words[None], pair.region_mask[None], pair.word_mask[None], direction, rule
            )[0]
            for phrase in pair.phrases:
                gold = gold_regions(
                    pair.boxes, torch.tensor(phrase["boxes"], dtype=torch.float32), rule.iou_threshold
                )
                phrase_words = pair.phrase_words(phrase)
                if not phrase_words:
                    continue
                p, r, valid = word_precision_recall(
                    attended[phrase_words], gold.unsqueeze(0).expand(len(phrase_words), -1)
                )
                precisions.append(p[valid])
                recalls.append(r[valid])
    summary = summarize_precision_recall(torch.cat(precisions), torch.cat(recalls))
    return {
        **summary,
        "direction": direction,
        "attended_set_rule": rule.to_dict(),
        "word_combine": word_combine,
    }
