"""Does a backbone escape the equal-scores plateau of the hardest-negative hinge? A short probe.

Trains a backbone on the built-in corpus (demo sizes, batch 128, Adam lr 5e-4, clip 2.0) for a few steps
twice from the same initialisation: with the VSE++ hardest-negative hinge (`max_violation: true`) and
with the hinge summed over negatives. Prints, every few steps, the batch loss and the mean score of the
matched pairs minus the mean score of all pairs (0 = every pair scores the same).

    python benchmarks/hinge_plateau.py --backbone sgr --steps 24

Numbers are measured on the built-in synthetic corpus only.
"""

from __future__ import annotations

import argparse
import time

import torch

from modeling_ccr import BACKBONES
from modeling_ccr.data.collator import RegionCaptionCollator
from modeling_ccr.data.pairs import ImageCaptionPairs
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.text.tokenization import build_word_tokenizer

DEMO_SIZES = {"embed_dim": 256, "word_dim": 128}


def probe(
    backbone: str, options: dict, pairs: ImageCaptionPairs, collate: RegionCaptionCollator, steps: int
) -> list[tuple]:
    config_class, model_class = BACKBONES[backbone]
    torch.manual_seed(0)
    model = model_class(config_class(**options))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    history = []
    for step in range(steps):
        start = (step * 128) % (len(pairs) - 128)
        output = model(**collate([pairs[i] for i in order[start : start + 128]]), return_loss=True)
        optimizer.zero_grad()
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        scores = output.logits_per_image.detach()
        history.append((step, output.loss.item(), (scores.diag().mean() - scores.mean()).item()))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="sgr", choices=sorted(set(BACKBONES) - {"ensemble"}))
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--train-images", type=int, default=600)
    args = parser.parse_args()
    corpus = build_synthetic_corpus(
        SyntheticCorpusConfig(train_images=args.train_images, validation_images=10, test_images=10, seed=0)
    )
    pairs = ImageCaptionPairs(corpus["train"])
    tokenizer = build_word_tokenizer(pairs.captions, min_count=4)
    options = {
        **DEMO_SIZES,
        "feature_dim": len(corpus["train"][0]["features"][0]),
        "vocab_size": len(tokenizer),
    }
    if "n_regions" in BACKBONES[args.backbone][0].__dataclass_fields__:
        options.update(n_regions=len(corpus["train"][0]["features"]), sim_dim=64)
    print(f"{args.backbone}, built-in synthetic corpus ({args.train_images} training images), batch 128")
    print("hinge       | step | loss    | matched minus mean score")
    for label, max_violation in (("hardest", True), ("summed", False)):
        started = time.time()
        history = probe(
            args.backbone,
            {**options, "max_violation": max_violation},
            pairs,
            RegionCaptionCollator(tokenizer),
            args.steps,
        )
        for step, loss, gap in history[:: max(1, args.steps // 6)] + history[-1:]:
            print(f"{label:11} | {step:4d} | {loss:7.2f} | {gap:.4f}")
        print(f"{label:11} | {time.time() - started:.0f} s for {args.steps} steps")


if __name__ == "__main__":
    main()
