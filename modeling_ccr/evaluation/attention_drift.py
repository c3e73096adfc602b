"""Where a head word's attention goes: its own object's region, and the context correlated with it.

The constraints (CCR, CCS) claim to stop a word's attention from drifting off its object onto context that
co-occurs with it in training (a dog word onto grass). On a corpus that knows where each context item is
drawn (the digit scenes: every digit has a "habitat" texture drawn beside it with some probability), two
shares of a matched pair's word-level attention measure that:

- own-region share: the share of a head word's attention on its own object's region(s), against the share
  the same regions would get from uniform attention;
- drift: the share on the region(s) of the word's habitat context item when that item is in the image,
  against the share on the region(s) of an unrelated context item (one in the image that is not the
  word's habitat). Context items are placed independently of the objects, so without drift the two are
  equal up to sampling; the paired difference (habitat - unrelated, over words whose image holds both)
  is the drift.
- other-object share: the share on the region(s) of another object the same caption names (another digit),
  the fairer baseline for the own-region share where regions are object proposals: a model that attends
  objects at all, but not the right one, puts more than the uniform share on every object.

Which regions belong to a box (`item_regions`): "best", the single region of highest IoU with the box (the
rule the end-to-end benchmark used first); or "inside", every region whose area lies at least half inside
the box (the cells a grid region set spends on the object), else the best one. The share of a set is the
sum of the word's attention over it; its uniform share is |set| / n_regions.

A word's attention over regions: t2i attention gives the word's row (a distribution over regions); i2t
attention gives, per region, a distribution over words, so the word's column is renormalised over the
regions (where the attention the word receives comes from).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from ..metrics.attention import ContextItem, box_iou
from ..models.modeling_matcher import MatcherPreTrainedModel
from ..text.tokenization import split_words
from .gallery import GroundedWordAttention, grounded_word_attentions

REGION_RULES: tuple[str, ...] = ("best", "inside")
# A region belongs to a box under the "inside" rule when at least this share of its area is in the box.
INSIDE_SHARE = 0.5


def item_regions(
    region_boxes: torch.Tensor, region_mask: torch.Tensor, box: torch.Tensor, rule: str = "best"
) -> torch.Tensor:
    """The regions that stand for one box: `(n_regions,)` bool.

    region_boxes `(n_regions, 4)` pixels, region_mask `(n_regions,)` bool (padding never belongs), box `(4,)`.
    "best": the valid region of highest IoU with the box (none when no valid region overlaps it);
    "inside": the valid regions with at least `INSIDE_SHARE` of their area inside the box, else "best".
    """
    if rule not in REGION_RULES:
        raise ValueError(f"region rule must be one of {REGION_RULES}, got {rule!r}")
    region_mask = region_mask.bool()
    box = box.reshape(1, 4).to(region_boxes.dtype)
    chosen = torch.zeros(len(region_boxes), dtype=torch.bool)
    if rule == "inside":
        top_left = torch.maximum(region_boxes[:, :2], box[:, :2])
        bottom_right = torch.minimum(region_boxes[:, 2:], box[:, 2:])
        intersection = (bottom_right - top_left).clamp_min(0).prod(dim=-1)
        area = (region_boxes[:, 2:] - region_boxes[:, :2]).clamp_min(0).prod(dim=-1)
        chosen = region_mask & (area > 0) & (intersection >= INSIDE_SHARE * area)
        if chosen.any():
            return chosen
    iou = box_iou(region_boxes, box)[:, 0].masked_fill(~region_mask, -1.0)
    best = int(iou.argmax())
    if iou[best] > 0:
        chosen[best] = True
    return chosen


def word_region_distribution(pair: GroundedWordAttention, word: int, direction: str) -> torch.Tensor:
    """`(n_regions,)` word `word`'s attention over the pair's regions (zero at padding), summing to 1.

    t2i: the word's row; i2t: the word's column renormalised over the valid regions.
    """
    if direction == "t2i":
        row = pair.words[word].float()
    elif direction == "i2t":
        row = pair.words[:, word].float()
    else:
        raise ValueError(f"attention direction must be 't2i' or 'i2t', got {direction!r}")
    row = row * pair.region_mask.float()
    total = row.sum()
    return row / total if total > 0 else row


@dataclass
class WordDrift:
    """One head word's shares. own / habitat / unrelated: attention share on that item's regions (None
    when the item is absent or has no region); the *_uniform fields: the share uniform attention gives."""

    word: str
    own: float
    own_uniform: float
    own_is_argmax: bool
    habitat: float | None = None
    habitat_uniform: float | None = None
    unrelated: float | None = None  # mean over the unrelated context items in the image
    unrelated_uniform: float | None = None
    other: float | None = None  # mean over the boxes of the other objects the caption names
    other_uniform: float | None = None


def word_drift(
    distribution: torch.Tensor,
    region_boxes: torch.Tensor,
    region_mask: torch.Tensor,
    own_box: torch.Tensor,
    habitat_box: torch.Tensor | None,
    unrelated_boxes: Sequence[torch.Tensor],
    word: str = "",
    rule: str = "best",
    other_boxes: Sequence[torch.Tensor] = (),
) -> WordDrift | None:
    """The shares of one word's attention `distribution` `(n_regions,)` (see `word_region_distribution`).

    own_box `(4,)`: the word's object; habitat_box `(4,)` or None; unrelated_boxes, other_boxes (the other
    objects the caption names): `(4,)` each. Regions of the word's own object are removed from another item's set (a grid cell shared by a digit and a texture
    beside it says nothing about drift). None when no region stands for the own box.
    """
    region_mask = region_mask.bool()
    n_valid = int(region_mask.sum())
    own = item_regions(region_boxes, region_mask, own_box, rule)
    if not own.any():
        return None
    valid_scores = distribution.masked_fill(~region_mask, float("-inf"))
    result = WordDrift(
        word=word,
        own=float(distribution[own].sum()),
        own_uniform=int(own.sum()) / n_valid,
        own_is_argmax=bool(own[int(valid_scores.argmax())]),
    )

    def context_share(box: torch.Tensor) -> tuple[float, float] | None:
        regions = item_regions(region_boxes, region_mask, box, rule) & ~own
        if not regions.any():
            return None
        return float(distribution[regions].sum()), int(regions.sum()) / n_valid

    if habitat_box is not None:
        found = context_share(habitat_box)
        if found is not None:
            result.habitat, result.habitat_uniform = found
    unrelated = [s for s in (context_share(b) for b in unrelated_boxes) if s is not None]
    if unrelated:
        result.unrelated = sum(s for s, _ in unrelated) / len(unrelated)
        result.unrelated_uniform = sum(u for _, u in unrelated) / len(unrelated)
    others = [s for s in (context_share(b) for b in other_boxes) if s is not None]
    if others:
        result.other = sum(s for s, _ in others) / len(others)
        result.other_uniform = sum(u for _, u in others) / len(others)
    return result


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_drift(words: Iterable[WordDrift]) -> dict[str, float | int | None]:
    """Means over head words: own-region share and its uniform share, how often the own region is the most
    attended, the habitat and unrelated shares (over words whose image holds such an item), and the paired
    drift: mean of habitat - unrelated over words whose image holds both; the other-object share (over words
    whose caption names another object)."""
    words = list(words)
    if not words:
        raise ValueError("no head word with a region for its own box: nothing to measure")
    habitat = [w for w in words if w.habitat is not None]
    unrelated = [w for w in words if w.unrelated is not None]
    paired = [w for w in words if w.habitat is not None and w.unrelated is not None]
    others = [w for w in words if w.other is not None]
    own = _mean([w.own for w in words])
    own_uniform = _mean([w.own_uniform for w in words])
    return {
        "head_words": len(words),
        "own_region_share": own,
        "own_uniform_share": own_uniform,
        "own_over_uniform": own / own_uniform if own_uniform else None,
        "own_region_is_argmax": _mean([float(w.own_is_argmax) for w in words]),
        "words_with_habitat": len(habitat),
        "habitat_share": _mean([w.habitat for w in habitat]),
        "habitat_uniform_share": _mean([w.habitat_uniform for w in habitat]),
        "words_with_unrelated": len(unrelated),
        "unrelated_share": _mean([w.unrelated for w in unrelated]),
        "unrelated_uniform_share": _mean([w.unrelated_uniform for w in unrelated]),
        "words_with_both": len(paired),
        "drift": _mean([w.habitat - w.unrelated for w in paired]),
        "words_with_other_object": len(others),
        "other_object_share": _mean([w.other for w in others]),
        "other_object_uniform_share": _mean([w.other_uniform for w in others]),
        "own_minus_other_object": _mean([w.own - w.other for w in others]),
    }


def pair_word_drifts(
    pair: GroundedWordAttention,
    contexts: Sequence[ContextItem],
    habitats: Mapping[str, str],
    direction: str,
    head_phrase_types: Sequence[str],
    rule: str = "best",
) -> list[WordDrift]:
    """The `WordDrift` of every head word in one grounded caption: the last word of each phrase whose type
    is in `head_phrase_types`, when that word is one of `habitats`' keys (its habitat label) and was not
    truncated. contexts: the items drawn in the pair's image; the habitat is the item labelled
    `habitats[word]`, the unrelated items are every other one; the other objects are the boxes of the caption's
    other phrases of those types."""
    found = []
    heads = [p for p in pair.phrases if p["phrase_type"] in head_phrase_types and p["boxes"]]
    for phrase in heads:
        head = phrase["first_word"] + phrase["num_words"] - 1
        word = split_words(phrase["phrase"])[-1]
        if word not in habitats or head not in pair.phrase_words(phrase):
            continue
        own_box = torch.tensor(phrase["boxes"], dtype=torch.float32)
        # An object with several gold boxes is represented by the one whose best region fits best.
        own_box = own_box[int(box_iou(pair.boxes.float(), own_box).max(0).values.argmax())]
        habitat = [torch.tensor(c.box, dtype=torch.float32) for c in contexts if c.label == habitats[word]]
        unrelated = [torch.tensor(c.box, dtype=torch.float32) for c in contexts if c.label != habitats[word]]
        others = [
            torch.tensor(box, dtype=torch.float32)
            for other in heads
            if other is not phrase and other.get("entity_id") != phrase.get("entity_id")
            for box in other["boxes"]
        ]
        drift = word_drift(
            word_region_distribution(pair, head, direction),
            pair.boxes.float(),
            pair.region_mask,
            own_box,
            habitat[0] if habitat else None,
            unrelated,
            word,
            rule,
            others,
        )
        if drift is not None:
            found.append(drift)
    return found


def drift_from_attentions(
    pairs: Iterable[GroundedWordAttention],
    image_ids: Sequence[str],
    contexts: Mapping[str, Sequence[ContextItem]],
    habitats: Mapping[str, str],
    direction: str,
    head_phrase_types: Sequence[str],
    rule: str = "best",
) -> dict[str, float | int | None]:
    """`summarize_drift` over grounded captions' word attention. image_ids: the split's `image_id` column
    (a pair's `row` indexes it); contexts: image id -> the context items drawn in that image."""
    words: list[WordDrift] = []
    for pair in pairs:
        image_id = image_ids[pair.row]
        if image_id not in contexts:
            raise ValueError(
                f"no context items for image_id {image_id!r}: the contexts must cover every image of the split"
            )
        words.extend(pair_word_drifts(pair, contexts[image_id], habitats, direction, head_phrase_types, rule))
    return summarize_drift(words)


@torch.no_grad()
def attention_drift(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: datasets.Dataset,
    contexts: Mapping[str, Sequence[ContextItem]],
    habitats: Mapping[str, str],
    head_phrase_types: Sequence[str],
    rule: str = "best",
    max_pairs: int | None = None,
    batch_size: int = 64,
) -> dict[str, float | int | None]:
    """Own-region share and drift of a model's matched-pair attention on a split with boxes and phrases
    (a feature split: encode an image corpus first with `tower_feature_split`), over its first `max_pairs`
    grounded captions. See the module docstring and `summarize_drift` for the keys."""
    pairs = grounded_word_attentions(model, tokenizer, split, batch_size=batch_size, max_pairs=max_pairs)
    return drift_from_attentions(
        pairs,
        [str(i) for i in split["image_id"]],
        contexts,
        habitats,
        model.attention_direction,
        head_phrase_types,
        rule,
    )


def digit_scenes_drift(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: datasets.Dataset,
    corpus_folder: str | Path | None,
    split_name: str,
    rule: str = "best",
) -> dict[str, float | int | None] | None:
    """`attention_drift` of a split of a saved digit-scenes corpus (its textures drawn again from the config
    recorded in the folder, and checked against the split), digit words as the head words; None when
    `corpus_folder` is not a digit-scenes corpus or the model has no cross-attention. `split`: the feature
    split the model scores (an image corpus already through `tower_feature_split`)."""
    if corpus_folder is None or not getattr(model.config, "has_cross_attention", False):
        return None
    try:
        from ..vision.digit_scenes import (
            CONFIG_FILE,
            DIGIT_PHRASE_TYPE,
            HABITAT_TEXTURES,
            saved_scene_textures,
        )
    except ImportError:  # no vision extra (timm): no digit-scenes corpus was written with this install
        return None
    if not (Path(corpus_folder) / CONFIG_FILE).is_file():
        return None
    contexts = saved_scene_textures(corpus_folder, split_name)
    return attention_drift(model, tokenizer, split, contexts, HABITAT_TEXTURES, (DIGIT_PHRASE_TYPE,), rule)
