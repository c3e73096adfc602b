"""Full-gallery evaluation: encode a split once, score every image-caption pair in blocks, rank.

Never imported by the models. Ensembles average the similarity matrices of their members.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .data.collator import pad_regions, tokenize_captions
from .data.pairs import ImageFeatures, caption_table
from .metrics.retrieval import evaluate_retrieval
from .modeling_matcher import MatcherPreTrainedModel


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


@torch.no_grad()
def corpus_similarity(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    progress: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """Score every image of `dataset` against every caption: `(n_images, n_captions)` and caption_to_image."""
    was_training = model.training
    model.eval()
    captions, caption_to_image = caption_table(dataset)
    image_embeds, region_mask = encode_images(model, dataset, progress=progress)
    text_embeds, word_mask = encode_captions(model, tokenizer, captions, progress=progress)
    similarity = model.similarity(image_embeds, region_mask, text_embeds, word_mask)
    model.train(was_training)
    return similarity.cpu(), caption_to_image


def evaluate_matchers(
    models: Sequence[MatcherPreTrainedModel],
    tokenizers: Sequence[PreTrainedTokenizerBase],
    dataset: datasets.Dataset,
    protocol: str = "full",
    captions_per_image: int | None = 5,
    progress: bool = False,
) -> dict:
    """Retrieval metrics of one model, or of an ensemble (the mean of the members' similarity matrices)."""
    if len(models) != len(tokenizers) or not models:
        raise ValueError(
            f"need one tokenizer per model, got {len(models)} models and {len(tokenizers)} tokenizers"
        )
    similarities = []
    for model, tokenizer in zip(models, tokenizers, strict=True):
        similarity, caption_to_image = corpus_similarity(model, tokenizer, dataset, progress=progress)
        similarities.append(similarity)
    similarity = torch.stack(similarities).mean(dim=0)
    metrics = evaluate_retrieval(
        similarity, caption_to_image, protocol=protocol, check_captions_per_image=captions_per_image
    )
    metrics["ensemble_size"] = len(models)
    return metrics
