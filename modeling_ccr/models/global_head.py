"""A global head: one l2-normalised embedding per image and per caption, for the first stage of retrieval.

Any matcher can carry it: it reads the matcher's own fragment embeddings (regions `(batch, n_regions, D)`,
words `(batch, n_words, D)`) and pools them into vectors of `global_dim`, so a gallery can be searched by
inner product (`evaluation/index.py`) and the cross-attention model re-ranks the shortlist. Two poolings:

- "mean": a learned linear projection of the masked mean of the fragments (initialised to the identity
  when `global_dim == D`, so an untrained head is the mean-pooled baseline);
- "gpo": VSE-infinity's Generalized Pooling Operator (`pooling.GeneralizedPooling`) over the projected
  fragments.

Its loss has two weighted terms: a symmetric InfoNCE over the in-batch global scores, and (optional)
distillation of the fine-grained model's in-batch ranking: KL(softmax(fine / t_f) || softmax(global / t))
over each image's row and each caption's column, the fine-grained scores detached, so the head learns
to order candidates as the cross-attention model does (ALADIN's idea). `fit_global_head` trains a head
alone on frozen fragment embeddings with a given fine-grained scorer.

Checkpoint code: sibling imports only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .pooling import GeneralizedPooling

POOLINGS = ("mean", "gpo")
# Settings of a head; `embed_dim` (the matcher's fragment size) is required.
DEFAULTS: dict[str, Any] = {
    "embed_dim": None,
    "global_dim": None,  # None: embed_dim
    "pooling": "mean",
    "temperature": 0.05,  # of the InfoNCE over global scores
    "contrastive_weight": 1.0,
    "distill_weight": 0.0,
    "distill_temperature": 0.05,  # of the softmax over the fine-grained scores
}


def head_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` completed with `DEFAULTS` and checked; an unknown or invalid field is a ValueError naming it."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"global_head: unknown field(s) {unknown}; expected some of {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **config}
    for name in ("embed_dim", "global_dim"):
        value = settings[name]
        if value is None and name == "global_dim":
            settings[name] = settings["embed_dim"]
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"global_head.{name}: expected a positive integer, found {value!r}")
    if settings["pooling"] not in POOLINGS:
        raise ValueError(f"global_head.pooling: expected one of {POOLINGS}, found {settings['pooling']!r}")
    for name in ("temperature", "distill_temperature"):
        if not isinstance(settings[name], (int, float)) or settings[name] <= 0:
            raise ValueError(f"global_head.{name}: expected a positive number, found {settings[name]!r}")
    for name in ("contrastive_weight", "distill_weight"):
        if not isinstance(settings[name], (int, float)) or settings[name] < 0:
            raise ValueError(f"global_head.{name}: expected a number >= 0, found {settings[name]!r}")
    return settings


def masked_mean(items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the valid items: `(batch, n, D)`, mask `(batch, n)` bool -> `(batch, D)`."""
    weights = mask.unsqueeze(-1).to(items.dtype)
    return (items * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)


class SidePooling(nn.Module):
    """One side's pooling: fragments `(batch, n, D)` and mask `(batch, n)` -> `(batch, global_dim)`, l2-normalised."""

    def __init__(self, embed_dim: int, global_dim: int, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.projection = nn.Linear(embed_dim, global_dim)
        self.gpo = GeneralizedPooling() if pooling == "gpo" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Through transformers' init so that weights loaded from a checkpoint are never overwritten.
        weight = self.projection.weight
        if weight.shape[0] == weight.shape[1]:
            init.eye_(weight)
        else:
            init.xavier_uniform_(weight)
        init.zeros_(self.projection.bias)
        if self.gpo is not None:
            self.gpo.reset_parameters()

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        if self.gpo is None:
            pooled = self.projection(masked_mean(items, mask))
        else:
            pooled = self.gpo(self.projection(items), mask)
        return F.normalize(pooled, dim=-1)


class GlobalHead(nn.Module):
    """Global image and caption embeddings from a matcher's fragments, and their loss terms.

    config: a mapping of `DEFAULTS`' fields (`embed_dim` required). The base model calls
    `embed_images(region_embeds, region_mask)`, `embed_texts(word_embeds, word_mask)` and
    `loss(images, texts, fine_scores, same_image)`.
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.settings = head_settings(config)
        embed_dim, global_dim, pooling = (self.settings[k] for k in ("embed_dim", "global_dim", "pooling"))
        self.image_pooling = SidePooling(embed_dim, global_dim, pooling)
        self.text_pooling = SidePooling(embed_dim, global_dim, pooling)

    def reset_parameters(self) -> None:
        self.image_pooling.reset_parameters()
        self.text_pooling.reset_parameters()

    def embed_images(self, region_embeds: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
        """`(batch, n_regions, D)`, mask `(batch, n_regions)` -> `(batch, global_dim)` l2-normalised."""
        return self.image_pooling(region_embeds, region_mask)

    def embed_texts(self, word_embeds: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """`(batch, n_words, D)`, mask `(batch, n_words)` -> `(batch, global_dim)` l2-normalised."""
        return self.text_pooling(word_embeds, word_mask)

    def loss(
        self,
        images: torch.Tensor,
        texts: torch.Tensor,
        fine_scores: torch.Tensor | None = None,
        same_image: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of a batch of pairs (image i, caption i).

        images, texts `(batch, global_dim)` from `embed_images` / `embed_texts`; fine_scores `(batch, batch)`
        the matcher's scores of image i with caption j (needed when distill_weight > 0; detached here);
        same_image `(batch, batch)` bool marks pairs of one image (captions of one image are not each
        other's negatives). Returns "global_loss" (the weighted sum), "global_contrastive_loss" and, with
        distillation, "global_distill_loss"; each a mean over the batch.
        """
        settings = self.settings
        logits = images @ texts.T
        positives = torch.eye(len(images), dtype=torch.bool, device=images.device)
        excluded = (same_image & ~positives) if same_image is not None else torch.zeros_like(positives)
        scaled = (logits / settings["temperature"]).masked_fill(excluded, float("-inf"))
        target = torch.arange(len(images), device=images.device)
        contrastive = (F.cross_entropy(scaled, target) + F.cross_entropy(scaled.T, target)) / 2
        terms = {"global_contrastive_loss": contrastive}
        total = settings["contrastive_weight"] * contrastive
        if settings["distill_weight"] > 0:
            if fine_scores is None:
                raise ValueError("global_head: distill_weight > 0 needs the fine-grained scores of the batch")
            teacher = (fine_scores.detach().float() / settings["distill_temperature"]).masked_fill(
                excluded, float("-inf")
            )
            distill = (ranking_kl(teacher, scaled) + ranking_kl(teacher.T, scaled.T)) / 2
            terms["global_distill_loss"] = distill
            total = total + settings["distill_weight"] * distill
        terms["global_loss"] = total
        return terms


def ranking_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)), `(rows, n)` each; -inf entries are
    excluded candidates (they carry no mass on either side)."""
    teacher = torch.softmax(teacher_logits, dim=-1)
    log_ratio = torch.log_softmax(teacher_logits, dim=-1) - torch.log_softmax(student_logits, dim=-1)
    return torch.where(teacher > 0, teacher * log_ratio, 0.0).sum(dim=-1).mean()


def fit_global_head(
    head: GlobalHead,
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    caption_to_image: torch.Tensor,
    fine_scores: Callable[..., torch.Tensor] | None = None,
    steps: int = 200,
    batch_size: int = 128,
    learning_rate: float = 1e-2,
    seed: int = 0,
) -> list[float]:
    """Train `head` alone on frozen fragment embeddings; returns the loss of every step.

    image_embeds `(n_images, n_regions, D)`, region_mask; text_embeds `(n_captions, n_words, D)`,
    word_mask; caption_to_image `(n_captions,)` long. Each step draws `batch_size` captions (at most one
    per image) and their images. fine_scores(images, region_mask, texts, word_mask) -> `(batch, batch)`
    (e.g. the matcher's `score_pairs`), needed when the head distils.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    device = image_embeds.device
    caption_to_image = caption_to_image.to(device)
    losses = []
    head.train()
    for _ in range(steps):
        # One caption per image: the drawn captions' images are distinct, so every pair is a negative.
        shuffled = torch.randperm(len(caption_to_image), generator=generator).to(device)
        by_image = shuffled[torch.argsort(caption_to_image[shuffled], stable=True)]
        first = torch.ones(len(by_image), dtype=torch.bool, device=device)
        first[1:] = caption_to_image[by_image[1:]] != caption_to_image[by_image[:-1]]
        one_each = by_image[first]
        captions = one_each[torch.randperm(len(one_each), generator=generator)[:batch_size].to(device)]
        images = caption_to_image[captions]
        scores = None
        if head.settings["distill_weight"] > 0:
            with torch.no_grad():
                scores = fine_scores(
                    image_embeds[images], region_mask[images], text_embeds[captions], word_mask[captions]
                )
        terms = head.loss(
            head.embed_images(image_embeds[images], region_mask[images]),
            head.embed_texts(text_embeds[captions], word_mask[captions]),
            scores,
        )
        optimizer.zero_grad()
        terms["global_loss"].backward()
        optimizer.step()
        losses.append(float(terms["global_loss"].detach()))
    head.eval()
    return losses
