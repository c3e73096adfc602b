"""Where does a phrase's head word put its attention? A diagnostic for when attention metrics do not move.

For every grounded object phrase of a split, takes the attention row of the phrase's last word (its head
noun: "seven" in "a small green seven") over the image's regions, in a t2i model, and reports the mean
attention mass on gold regions (IoU >= 0.5 with a phrase box), on regions that overlap a phrase box below
that, and on regions that do not touch it; how many regions pass the 1/n rule; and how often the most
attended region is a gold one. Run on your own corpus and models; numbers are only as real as the corpus.

    python benchmarks/attention_mass.py runs/digit_scenes \\
        runs/ablation_digit_scenes/scan-t2i/base/seed0/model runs/ablation_digit_scenes/scan-t2i/both/seed0/model
"""

from __future__ import annotations

import argparse

import datasets
import torch

from modeling_ccr.artifacts.loading import load_matcher
from modeling_ccr.evaluation.gallery import grounded_word_attentions
from modeling_ccr.metrics.attention import box_iou

GOLD_IOU = 0.5


def head_word_mass(model, tokenizer, split: datasets.Dataset, max_pairs: int) -> dict[str, float]:
    """Mean attention mass of head words on gold / overlapping / disjoint regions, and attended-set stats."""
    if model.attention_direction != "t2i":
        raise SystemExit("attention_mass.py reads word-to-region attention: give it t2i models")
    mass, attended, argmax_gold, n_heads = torch.zeros(3), 0.0, 0, 0
    for pair in grounded_word_attentions(model, tokenizer, split, max_pairs=max_pairs):
        n_regions = len(pair.boxes)
        for phrase in pair.phrases:
            head = phrase["first_word"] + phrase["num_words"] - 1
            if phrase["phrase_type"] == "scene" or head not in pair.phrase_words(phrase):
                continue
            iou = box_iou(pair.boxes, torch.tensor(phrase["boxes"], dtype=torch.float32)).max(1).values
            row_attention = pair.words[head]
            gold, disjoint = iou >= GOLD_IOU, iou == 0
            overlap = ~gold & ~disjoint
            mass += torch.stack([row_attention[m].sum() for m in (gold, overlap, disjoint)])
            attended += float((row_attention >= 1.0 / n_regions).sum())
            argmax_gold += bool(gold[row_attention.argmax()])
            n_heads += 1
    if n_heads == 0:
        raise SystemExit("no grounded object phrase with a head word in this split")
    gold_mass, overlap_mass, disjoint_mass = (mass / n_heads).tolist()
    return {
        "head_words": n_heads,
        "mass_gold": gold_mass,
        "mass_overlap": overlap_mass,
        "mass_disjoint": disjoint_mass,
        "attended_regions": attended / n_heads,
        "argmax_on_gold": argmax_gold / n_heads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", help="a saved DatasetDict folder with boxes and phrases")
    parser.add_argument("models", nargs="+", help="t2i model folders")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-pairs", type=int, default=1500, help="grounded captions read")
    args = parser.parse_args()
    split = datasets.load_from_disk(args.corpus)[args.split]
    print(f"Head-word attention on {args.corpus} ({args.split} split)")
    print("| model | head words | mass gold / overlap / disjoint | regions >= 1/n | argmax on gold |")
    print("|---|---|---|---|---|")
    for folder in args.models:
        model, tokenizer = load_matcher(folder)
        r = head_word_mass(model, tokenizer, split, args.max_pairs)
        masses = f"{r['mass_gold']:.3f} / {r['mass_overlap']:.3f} / {r['mass_disjoint']:.3f}"
        print(
            f"| {folder} | {r['head_words']} | {masses} | {r['attended_regions']:.2f} | {r['argmax_on_gold']:.3f} |"
        )


if __name__ == "__main__":
    main()
