"""What CCR and CCS do to a trained SCAN t2i model's attention: measured, on a digit-scenes corpus.

For a trained model folder and batches of the corpus's train split (batches of distinct images, as in
training), measures at the end of training:

(a) on what share of words (all constrained words, and digit words) the CCR and the CCS hinge is active
    (term > 0), for a model trained with or without them (the margins are the config's);
(b) the attended set the rule picks per digit word (`constraint_attended_set`, CCS swaps it out) against
    the gold regions (the region that best fits the digit's box, as the drift measure counts it, and the
    regions at least half inside it), and how often the gold region is in the set;
(c) the gradient of the base loss, CCR and CCS with respect to the matched pair's attention logits
    s_tj = q_t . k_j of each digit word: descent direction delta = -dL/ds_t (centred over the valid
    regions, since a common shift of a row says nothing about where attention goes), and
    - "gold vs habitat": the share of digit words (whose image holds their habitat texture) on which
      delta raises the gold region's logit more than the habitat region's, and the mean cosine of delta
      with d = 1_gold/|gold| - 1_habitat/|habitat|;
    - "gold vs rest": the same against all other regions;
    - "sharpen": the mean cosine of delta with the word's own centred attention row (positive = the
      gradient raises what is already attended, whatever it is);
    - "gold over argmax": on digit words whose most attended region is not gold, the share on which
      delta raises the gold logit more than the argmax region's;
(d) the gradient norm of w * CCR and w * CCS relative to the base loss on the parameters they share (the
    region and text encoders; the features come from the tower without gradient, it is frozen through
    these runs), and their cosines with the base gradient (negative = the terms fight the base loss).

CCS is measured in its `swap_keys` mode: the swapped key sets are rebuilt here from the same logits so
that its gradient through the recomputed attention reaches them too; the per-word terms are checked
against the package's `ccr_loss` / `ccs_loss` on every batch. The model runs in eval mode (no dropout).

    python benchmarks/constraint_mechanics.py runs/digit_scenes_images \\
        runs/ablation_digit_scenes_e2e/scan-t2i/base/seed0/model \\
        runs/ablation_digit_scenes_e2e/scan-t2i/both/seed0/model

Numbers are only as real as the corpus: the digit scenes are a generated corpus.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from modeling_ccr.artifacts.loading import load_matcher
from modeling_ccr.data.collator import pad_regions, tokenize_captions
from modeling_ccr.data.image_corpus import tower_feature_split
from modeling_ccr.errors import UserError
from modeling_ccr.evaluation.attention_drift import item_regions
from modeling_ccr.evaluation.gallery import grounded_pairs
from modeling_ccr.metrics.attention import box_iou
from modeling_ccr.models.constraints import (
    MatchedAttention,
    attended_set,
    ccr_loss,
    ccs_loss,
    constraint_terms,
    has_ignored_keys,
    hinge_term,
    other_keys,
    relevance,
)
from modeling_ccr.models.encoders import NORM_EPS
from modeling_ccr.text.tokenization import split_words
from modeling_ccr.text.word_alignment import word_token_positions
from modeling_ccr.vision.digit_scenes import DIGIT_PHRASE_TYPE, HABITAT_TEXTURES, saved_scene_textures

TERMS = ("base", "ccr", "ccs")
# A gradient row below this norm carries no direction (a word no active term reaches).
ZERO_GRADIENT = 1e-12
# The package's per-word terms and ours must agree to float32 rounding.
LOSS_TOLERANCE = 1e-4


# -- per-word terms from logits ----------------------------------------------------------------------
@dataclass
class WordRelevances:
    """One constraint's per-word relevances `(batch, m)`: the matched content's, the contrast's, and the
    words the term scores (bool)."""

    matched: torch.Tensor
    contrast: torch.Tensor
    mask: torch.Tensor

    def hinge(self, margin: float) -> torch.Tensor:
        """`(batch, m)` the per-word hinge [margin - matched + contrast]_+, zero off the mask."""
        return (margin - self.matched + self.contrast).clamp_min(0) * self.mask

    def loss(self, margin: float) -> torch.Tensor:
        """`()` the term as the package reduces it (per-pair mean, summed over pairs)."""
        return hinge_term(self.matched, self.contrast, self.mask, margin).loss


def ccr_relevances(matched: MatchedAttention) -> WordRelevances:
    """CCR's per-word relevances: content attended vs content re-sourced from (1 - a) (`ccr_loss`)."""
    key_mask = matched.key_mask.unsqueeze(1).to(matched.attention.dtype)
    content = matched.attention @ matched.keys
    ignored = (1 - matched.attention) * key_mask
    resourced = ignored / ignored.sum(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    return WordRelevances(
        relevance(matched.queries, content),
        relevance(matched.queries, resourced @ matched.keys),
        matched.scored & has_ignored_keys(matched),
    )


def ccs_relevances(matched: MatchedAttention, logits: torch.Tensor, rule: str, top_k: int) -> WordRelevances:
    """CCS swap_keys' per-word relevances, its swapped key sets built from `logits` `(batch, m, n)` (the
    logits `matched.attention` came from), so the gradient through the recomputed attention reaches them."""
    content = matched.attention @ matched.keys
    attended = attended_set(matched.attention.detach(), matched.key_mask.unsqueeze(1), rule, top_k)
    donor_keys, donor_mask = other_keys(matched)
    donor_logits = matched.queries @ donor_keys.transpose(-1, -2)
    swap = attended.unsqueeze(2)  # (batch, t, 1, n): key set t, every query of the pair
    set_logits = torch.where(swap, donor_logits.unsqueeze(1), logits.unsqueeze(1))
    set_mask = torch.where(attended, donor_mask.unsqueeze(1), matched.key_mask.unsqueeze(1))
    set_attention = matched.attention_function(set_logits, matched.query_mask.unsqueeze(1), set_mask)
    own_rows = set_attention.diagonal(dim1=1, dim2=2).permute(0, 2, 1)  # row t of key set t
    from_donor = own_rows * attended
    swapped = from_donor @ donor_keys + (own_rows - from_donor) @ matched.keys
    return WordRelevances(
        relevance(matched.queries, content), relevance(matched.queries, swapped), matched.scored
    )


def matched_pair_scores(matched: MatchedAttention) -> torch.Tensor:
    """`(batch,)` SCAN t2i avg score of each matched pair: mean over valid words of R(q_t, a_t K)."""
    word_relevance = relevance(matched.queries, matched.attention @ matched.keys) * matched.query_mask
    return word_relevance.sum(dim=1) / matched.query_mask.sum(dim=1).clamp_min(1)


# -- direction statistics ----------------------------------------------------------------------------
def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Cosine of two vectors, None when either is (numerically) zero."""
    na, nb = float(a.norm()), float(b.norm())
    if na < ZERO_GRADIENT or nb < ZERO_GRADIENT:
        return None
    return float(a @ b) / (na * nb)


def contrast_direction(n: int, gold: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`(n,)` the logit direction that raises the `gold` regions and lowers the `other` ones (bool masks)."""
    return gold.float() / gold.sum().clamp_min(1) - other.float() / other.sum().clamp_min(1)


def direction_stats(
    descent: torch.Tensor, attention: torch.Tensor, gold: torch.Tensor, habitat: torch.Tensor | None
) -> dict[str, float | None]:
    """How one word's descent direction `(n_valid,)` on its logits moves its attention `(n_valid,)`.

    gold, habitat: `(n_valid,)` bool (habitat None when the image has no habitat region). Keys: the
    cosines with gold-vs-habitat and gold-vs-rest, whether each is positive, the cosine with the word's own
    centred attention ("sharpen") and, when the most attended region is not gold, whether the descent
    raises the gold logit more than the argmax one. None where undefined (zero gradient, no habitat).
    """
    n = len(descent)
    delta = descent - descent.mean()
    stats: dict[str, float | None] = {}
    hab = cosine(delta, contrast_direction(n, gold, habitat)) if habitat is not None else None
    rest = cosine(delta, contrast_direction(n, gold, ~gold))
    stats["cos_gold_habitat"] = hab
    stats["gold_over_habitat"] = None if hab is None else float(hab > 0)
    stats["cos_gold_rest"] = rest
    stats["gold_over_rest"] = None if rest is None else float(rest > 0)
    stats["cos_sharpen"] = cosine(delta, attention - attention.mean())
    top = int(attention.argmax())
    stats["gold_over_argmax"] = None
    if not bool(gold[top]) and float(delta.norm()) >= ZERO_GRADIENT:
        stats["gold_over_argmax"] = float(float(delta[gold].mean()) > float(delta[top]))
    stats["norm"] = float(delta.norm())
    return stats


# -- the corpus --------------------------------------------------------------------------------------
@dataclass
class DigitWord:
    """A digit word of a batch: batch position, token position, its gold box `(4,)` and habitat box (or None)."""

    pair: int
    token: int
    own_box: torch.Tensor
    habitat_box: torch.Tensor | None


def digit_words(
    phrases: Sequence[Sequence[dict]],
    positions: Sequence[Sequence[Sequence[int]]],
    region_boxes: Sequence[torch.Tensor],
    contexts: Sequence[Sequence],
) -> list[DigitWord]:
    """The head digit word of every digit phrase of a batch whose word kept a token, with its boxes.

    phrases / positions (`word_token_positions`) / region_boxes `(n_regions, 4)` / contexts (the image's
    context items): one per pair. An object with several gold boxes is represented by the one its best
    region fits best (as the drift measure does).
    """
    found = []
    for b, caption_phrases in enumerate(phrases):
        for phrase in caption_phrases:
            if phrase["phrase_type"] != DIGIT_PHRASE_TYPE or not phrase["boxes"]:
                continue
            word = split_words(phrase["phrase"])[-1]
            head = phrase["first_word"] + phrase["num_words"] - 1
            if word not in HABITAT_TEXTURES or head >= len(positions[b]) or not positions[b][head]:
                continue
            boxes = torch.tensor(phrase["boxes"], dtype=torch.float32)
            own = boxes[int(box_iou(region_boxes[b], boxes).max(0).values.argmax())]
            habitat = [c.box for c in contexts[b] if c.label == HABITAT_TEXTURES[word]]
            found.append(
                DigitWord(
                    b,
                    positions[b][head][-1],
                    own,
                    torch.tensor(habitat[0], dtype=torch.float32) if habitat else None,
                )
            )
    return found


def sample_batches(
    pairs: Sequence[tuple[int, int, list[dict]]], n_batches: int, batch_size: int, seed: int
) -> list[list[tuple[int, int, list[dict]]]]:
    """`n_batches` batches of grounded captions, each of `batch_size` distinct images (seeded)."""
    by_image: dict[int, list] = defaultdict(list)
    for pair in pairs:
        by_image[pair[0]].append(pair)
    if len(by_image) < batch_size:
        raise UserError(
            f"the split has {len(by_image)} grounded images, fewer than --batch-size {batch_size}"
        )
    rng = random.Random(seed)
    images = sorted(by_image)
    return [[rng.choice(by_image[row]) for row in rng.sample(images, batch_size)] for _ in range(n_batches)]


# -- one batch ---------------------------------------------------------------------------------------
def check_model(model, folder: str) -> None:
    config = model.config
    if getattr(model, "attention_function", None) is None or model.attention_direction != "t2i":
        raise UserError(
            f"{folder}: constraint_mechanics.py reads word-to-region attention; give it SCAN t2i models"
        )
    if config.aggregation != "avg" or config.ccs_mode != "swap_keys":
        raise UserError(
            f"{folder}: expected aggregation 'avg' and ccs_mode 'swap_keys' (SCAN t2i as in the ablation), "
            f"found {config.aggregation!r} and {config.ccs_mode!r}"
        )


def agree(name: str, ours: torch.Tensor, package: torch.Tensor) -> None:
    ours, package = ours.detach(), package.detach()
    if abs(float(ours) - float(package)) > LOSS_TOLERANCE * max(1.0, abs(float(package))):
        raise RuntimeError(f"{name}: per-word terms give {float(ours):.6f}, the package {float(package):.6f}")


def batch_inputs(model, tokenizer, features: datasets.Dataset, captions, batch):
    rows = [row for row, _, _ in batch]
    texts = [captions[row][c] for row, c, _ in batch]
    region_features, region_mask = pad_regions([features[r]["features"] for r in rows], rows)
    input_ids, attention_mask = tokenize_captions(tokenizer, texts, image_indices=rows)
    return rows, texts, region_features, region_mask, input_ids, attention_mask


def logit_measures(model, inputs, words: list[DigitWord], region_boxes, margins) -> dict[str, list]:
    """(a)-(c) on one batch: per-word hinge activity, attended sets and logit-gradient directions."""
    _, _, region_features, region_mask, input_ids, attention_mask = inputs
    config = model.config
    with torch.no_grad():
        image_embeds = model.get_image_features(region_features, region_mask)
        text_embeds = model.get_text_features(input_ids, attention_mask)
        word_mask = attention_mask.bool()
        view = model.matched_attention(
            image_embeds,
            region_mask,
            text_embeds,
            word_mask,
            model.constrained_word_mask(input_ids, word_mask),
        )[0]
        all_scores = model.score_pairs(image_embeds, region_mask, text_embeds, word_mask)
    logits = (view.queries @ view.keys.transpose(-1, -2)).requires_grad_()
    matched = MatchedAttention(
        view.queries,
        view.query_mask,
        view.keys,
        view.key_mask,
        view.attention_function(logits, view.query_mask, view.key_mask),
        view.attention_function,
        view.constrained_queries,
    )
    rule, top_k = config.constraint_attended_set, config.constraint_top_k
    ccr, ccs = ccr_relevances(matched), ccs_relevances(matched, logits, rule, top_k)
    agree("CCR", ccr.loss(margins["ccr"]), ccr_loss(view, margins["ccr"]).loss)
    agree("CCS", ccs.loss(margins["ccs"]), ccs_loss(view, margins["ccs"], "swap_keys", rule, top_k).loss)
    own_scores = matched_pair_scores(matched)
    agree("matched scores", (own_scores - all_scores.diagonal()).abs().max(), torch.zeros(()))
    # Only the matched pairs' scores depend on these logits; the negatives stay as the model scored them.
    scores = all_scores - torch.diag(all_scores.diagonal()) + torch.diag(own_scores)
    losses = {
        "base": model.base_loss(scores, scores),
        "ccr": ccr.loss(margins["ccr"]),
        "ccs": ccs.loss(margins["ccs"]),
    }
    gradients = {
        name: torch.autograd.grad(loss, logits, retain_graph=True)[0] for name, loss in losses.items()
    }
    hinges = {"ccr": (ccr.hinge(margins["ccr"]), ccr.mask), "ccs": (ccs.hinge(margins["ccs"]), ccs.mask)}
    found: dict[str, list] = defaultdict(list)
    for name, (hinge, mask) in hinges.items():
        found[f"{name}_active_all"].extend((hinge[mask] > 0).float().tolist())
    attention = matched.attention.detach()
    attended = attended_set(attention, matched.key_mask.unsqueeze(1), rule, top_k)
    for w in words:
        n = int(region_mask[w.pair].sum())
        boxes, valid = region_boxes[w.pair], torch.ones(n, dtype=torch.bool)
        gold = item_regions(boxes, valid, w.own_box, "best")
        if not gold.any():
            continue
        habitat = None
        if w.habitat_box is not None:
            habitat = item_regions(boxes, valid, w.habitat_box, "best") & ~gold
            habitat = habitat if habitat.any() else None
        row = attention[w.pair, w.token, :n]
        chosen = attended[w.pair, w.token, :n]
        for name, (hinge, mask) in hinges.items():
            if mask[w.pair, w.token]:
                found[f"{name}_active_digit"].append(float(hinge[w.pair, w.token] > 0))
        found["attended_size"].append(float(chosen.sum()))
        found["gold_best"].append(float(gold.sum()))
        found["gold_inside"].append(float(item_regions(boxes, valid, w.own_box, "inside").sum()))
        found["gold_in_attended"].append(float((chosen & gold).any()))
        found["attended_gold_share"].append(float((chosen & gold).sum()) / max(1.0, float(chosen.sum())))
        found["own_share"].append(float(row[gold].sum()))
        found["argmax_gold"].append(float(gold[int(row.argmax())]))
        if habitat is not None:
            found["habitat_share"].append(float(row[habitat].sum()))
        for name, gradient in gradients.items():
            for key, value in direction_stats(-gradient[w.pair, w.token, :n], row, gold, habitat).items():
                if value is not None:
                    found[f"{name}_{key}"].append(value)
    return found


def flat_gradient(loss: torch.Tensor, parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """`loss`'s gradient on `parameters`, flattened into one vector (zero for a parameter it does not reach)."""
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, parameters, strict=True)]
    )


def parameter_measures(model, inputs, margins, weight: float) -> dict[str, list]:
    """(d) on one batch: norms of the base / weighted constraint gradients on the shared parameters."""
    _, _, region_features, region_mask, input_ids, attention_mask = inputs
    config = model.config
    parameters = [
        p
        for module in (model.region_encoder, model.text_encoder)
        for p in module.parameters()
        if p.requires_grad
    ]
    image_embeds = model.get_image_features(region_features, region_mask)
    text_embeds = model.get_text_features(input_ids, attention_mask)
    word_mask = attention_mask.bool()
    base, _ = model.scores_and_base_loss(image_embeds, region_mask, text_embeds, word_mask, False)
    view = model.matched_attention(
        image_embeds, region_mask, text_embeds, word_mask, model.constrained_word_mask(input_ids, word_mask)
    )[0]
    terms = constraint_terms(
        view,
        margins["ccr"],
        margins["ccs"],
        "swap_keys",
        config.constraint_attended_set,
        config.constraint_top_k,
    )
    g_base = flat_gradient(base, parameters)
    found: dict[str, list] = defaultdict(list)
    found["base_loss"].append(float(base.detach()))
    found["base_grad_norm"].append(float(g_base.norm()))
    for name in ("ccr", "ccs"):
        g = flat_gradient(terms[name].loss, parameters)
        found[f"{name}_loss"].append(float(terms[name].loss.detach()))
        found[f"{name}_grad_ratio"].append(
            weight * float(g.norm()) / max(float(g_base.norm()), ZERO_GRADIENT)
        )
        cos = cosine(g, g_base)
        if cos is not None:
            found[f"{name}_grad_cos_base"].append(cos)
    return found


def measure_model(
    folder: str,
    split: datasets.Dataset,
    contexts: dict,
    batches: list,
    weight: float,
) -> dict[str, float]:
    """Means of every per-word / per-batch measure over the batches, with the counts behind them."""
    model, tokenizer = load_matcher(folder)
    check_model(model, folder)
    margins = {"ccr": model.config.ccr_margin, "ccs": model.config.ccs_margin}
    features = tower_feature_split(model, split)
    captions, image_ids = split["captions"], [str(i) for i in split["image_id"]]
    collected: dict[str, list] = defaultdict(list)
    for batch in batches:
        inputs = batch_inputs(model, tokenizer, features, captions, batch)
        rows, texts = inputs[0], inputs[1]
        region_boxes = [torch.as_tensor(features[r]["boxes"], dtype=torch.float32) for r in rows]
        words = digit_words(
            [phrases for _, _, phrases in batch],
            word_token_positions(tokenizer, texts),
            region_boxes,
            [contexts[image_ids[r]] for r in rows],
        )
        for measures in (
            logit_measures(model, inputs, words, region_boxes, margins),
            parameter_measures(model, inputs, margins, weight),
        ):
            for key, values in measures.items():
                collected[key].extend(values)
    summary = {key: sum(values) / len(values) for key, values in collected.items() if values}
    summary["digit_words"] = len(collected["attended_size"])
    summary["words_with_habitat"] = len(collected["habitat_share"])
    summary["ccr_weight"], summary["ccs_weight"] = model.config.ccr_weight, model.config.ccs_weight
    return summary


# -- output ------------------------------------------------------------------------------------------
def fmt(summary: dict, key: str, digits: int = 3) -> str:
    value = summary.get(key)
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_tables(results: dict[str, dict]) -> None:
    print("\n(a) hinge active (term > 0) | (b) attended set of digit words vs gold regions")
    print(
        "| model | digit words | CCR active: all / digit | CCS active: all / digit | attended regions | "
        "gold regions: best / inside | gold in attended set | gold share of attended set | own share | "
        "argmax on gold |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder, s in results.items():
        print(
            f"| {folder} | {s['digit_words']} | {fmt(s, 'ccr_active_all')} / {fmt(s, 'ccr_active_digit')} | "
            f"{fmt(s, 'ccs_active_all')} / {fmt(s, 'ccs_active_digit')} | {fmt(s, 'attended_size', 2)} | "
            f"{fmt(s, 'gold_best', 2)} / {fmt(s, 'gold_inside', 2)} | {fmt(s, 'gold_in_attended')} | "
            f"{fmt(s, 'attended_gold_share')} | {fmt(s, 'own_share')} | {fmt(s, 'argmax_gold')} |"
        )
    print("\n(c) descent direction on digit words' attention logits (share positive; mean cosine)")
    print(
        "| model | term | gold over habitat: share / cos | gold over rest: share / cos | sharpen cos | "
        "gold over argmax (argmax not gold) | logit-gradient norm |"
    )
    print("|---|---|---|---|---|---|---|")
    for folder, s in results.items():
        for term in TERMS:
            print(
                f"| {folder} | {term} | {fmt(s, f'{term}_gold_over_habitat')} / {fmt(s, f'{term}_cos_gold_habitat')} | "
                f"{fmt(s, f'{term}_gold_over_rest')} / {fmt(s, f'{term}_cos_gold_rest')} | "
                f"{fmt(s, f'{term}_cos_sharpen')} | {fmt(s, f'{term}_gold_over_argmax')} | "
                f"{fmt(s, f'{term}_norm', 5)} |"
            )
    print("\n(d) gradient on the shared parameters (region + text encoders), per batch, w = --weight")
    print(
        "| model | base loss | CCR loss | CCS loss | w*|g_CCR| / |g_base| | w*|g_CCS| / |g_base| | "
        "cos(g_CCR, g_base) | cos(g_CCS, g_base) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for folder, s in results.items():
        print(
            f"| {folder} | {fmt(s, 'base_loss')} | {fmt(s, 'ccr_loss')} | {fmt(s, 'ccs_loss')} | "
            f"{fmt(s, 'ccr_grad_ratio')} | {fmt(s, 'ccs_grad_ratio')} | {fmt(s, 'ccr_grad_cos_base')} | "
            f"{fmt(s, 'ccs_grad_cos_base')} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", help="a saved digit-scenes image corpus folder (with phrases and boxes)")
    parser.add_argument("models", nargs="+", help="trained SCAN t2i model folders")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument(
        "--batch-size", type=int, default=16, help="as in training (CCS swaps within a batch)"
    )
    parser.add_argument("--weight", type=float, default=0.1, help="constraint weight w in (d)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the per-model summaries to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        try:
            split = datasets.load_from_disk(args.corpus)[args.split]
        except (FileNotFoundError, KeyError) as error:
            raise UserError(
                f"{args.corpus}: no saved DatasetDict with a {args.split!r} split ({error})"
            ) from None
        contexts = saved_scene_textures(args.corpus, args.split)
        batches = sample_batches(grounded_pairs(split), args.batches, args.batch_size, args.seed)
        results = {
            folder: measure_model(folder, split, contexts, batches, args.weight) for folder in args.models
        }
    except (UserError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(
        f"Constraint mechanics on {args.corpus} ({args.split} split, generated digit scenes), "
        f"{args.batches} batches of {args.batch_size} distinct images, seed {args.seed}"
    )
    print_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
