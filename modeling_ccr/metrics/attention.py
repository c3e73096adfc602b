"""Attention Precision / Recall / F1 against phrase boxes (docs/spec.md section 4), as plain tensor functions.

For a matched (image, caption) pair and each word t inside a grounded phrase p:
G_t = regions whose box has IoU >= `iou_threshold` with any gold box of p;
A_t = the regions the word attends to (a_tj >= 1/n_valid by default; or a fixed threshold; or top-k);
P_t = |A_t & G_t| / |A_t|, R_t = |A_t & G_t| / |G_t|; words with an empty G_t are skipped.
An empty A_t (possible only with a fixed threshold) scores P_t = R_t = 0.
Reported: mean P, mean R over words, F1 = 2PR / (P + R) of the means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..models.constraints import ATTENDED_SET_NAMES, attended_set


@dataclass(frozen=True)
class ContextItem:
    """A context object drawn in an image (a texture patch beside a digit, say): its label and its
    `(x1, y1, x2, y2)` pixel box; what the attention drift measure (`evaluation/attention_drift.py`) reads."""

    label: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class AttendedSetSpec:
    """Which regions count as attended. `inverse_n`: a >= 1/n_valid_keys (the default);
    `threshold`: a >= value; `top_k`: the k largest weights (ties broken by index)."""

    rule: str = "inverse_n"
    value: float = 0.0
    iou_threshold: float = 0.5

    def __post_init__(self):
        if self.rule not in ATTENDED_SET_NAMES:
            raise ValueError(f"attended-set rule must be one of {ATTENDED_SET_NAMES}, got {self.rule!r}")
        if self.rule == "top_k" and (self.value < 1 or self.value != int(self.value)):
            raise ValueError(f"top_k rule needs an integer value >= 1, got {self.value!r}")
        if self.rule == "threshold" and not 0 < self.value <= 1:
            raise ValueError(f"threshold rule needs 0 < value <= 1, got {self.value!r}")
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of `(n, 4)` and `(k, 4)` boxes in (x1, y1, x2, y2) -> `(n, k)`; degenerate boxes give 0."""
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = (bottom_right - top_left).clamp_min(0).prod(dim=-1)
    area_a = (boxes_a[:, 2:] - boxes_a[:, :2]).clamp_min(0).prod(dim=-1)
    area_b = (boxes_b[:, 2:] - boxes_b[:, :2]).clamp_min(0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1e-12), torch.zeros_like(union))


def gold_regions(
    region_boxes: torch.Tensor, phrase_boxes: torch.Tensor, iou_threshold: float = 0.5
) -> torch.Tensor:
    """Regions `(n, 4)` whose box overlaps any of the phrase's boxes `(k, 4)` with IoU >= threshold: `(n,)` bool."""
    if phrase_boxes.numel() == 0:
        return torch.zeros(region_boxes.shape[0], dtype=torch.bool)
    return (box_iou(region_boxes, phrase_boxes) >= iou_threshold).any(dim=1)


def attended_regions(attention: torch.Tensor, key_mask: torch.Tensor, rule: AttendedSetSpec) -> torch.Tensor:
    """Attended set of each query: attention `(..., n)` over keys with mask `(..., n)` -> `(..., n)` bool.

    The same formula CCS uses (`modeling_ccr.models.constraints.attended_set`).
    """
    return attended_set(attention, key_mask, rule.rule, rule.value)


def word_precision_recall(
    attended: torch.Tensor, gold: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-word P and R from attended and gold region sets `(words, n)` bool.

    Returns precision `(words,)`, recall `(words,)` and `valid` `(words,)` bool (False where G is empty).
    """
    hits = (attended & gold).sum(dim=-1).float()
    n_attended = attended.sum(dim=-1).float()
    n_gold = gold.sum(dim=-1).float()
    precision = torch.where(n_attended > 0, hits / n_attended.clamp_min(1), torch.zeros_like(hits))
    recall = hits / n_gold.clamp_min(1)
    return precision, recall, n_gold > 0


def summarize_precision_recall(precision: torch.Tensor, recall: torch.Tensor) -> dict[str, float]:
    """Mean P and R over the scored words `(words,)`, and F1 of the means."""
    if precision.numel() == 0:
        raise ValueError(
            "no grounded word with a gold region to score: check the phrase boxes and region boxes"
        )
    p, r = float(precision.mean()), float(recall.mean())
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {
        "attention_precision": p,
        "attention_recall": r,
        "attention_f1": f1,
        "n_words": int(precision.numel()),
    }
