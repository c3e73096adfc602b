"""How much do the built-in corpus's captions say? The retrieval of an oracle that reads them perfectly.

The oracle knows every test image's objects (category and colour) and contexts, and scores a caption
against an image by how many of the caption's named items the image holds: a named "red dog" counts only
if the image has a red dog, a plain "dog" if it has any dog, a named context if it is present. Ties are
broken at random (mean over draws). A trained model can exceed this ceiling only with cues beyond the
names (how many objects an image holds, how salient a region is), so it measures how ambiguous the
captions make retrieval. Measured on the built-in synthetic corpus only.

    python benchmarks/caption_oracle.py                 # default corpus and the "hard" preset, ~20 s
    python benchmarks/caption_oracle.py --preset hard --split validation
"""

from __future__ import annotations

import argparse

import numpy as np

from modeling_ccr.data.synthetic import (
    ATTRIBUTES,
    CONTEXTS,
    SYNTHETIC_PRESETS,
    SyntheticCorpusConfig,
    SyntheticScene,
    generate_scenes,
)
from modeling_ccr.metrics.retrieval import evaluate_retrieval

TIE_BREAK_DRAWS = 5


def named_items(scene: SyntheticScene, phrases: list[dict]) -> list[tuple]:
    """One caption's named items: `("object", category, colour or None)` or `("context", name)`."""
    objects = {obj.entity_id: obj for obj in scene.objects}
    items = []
    for phrase in phrases:
        obj = objects.get(phrase["entity_id"])
        if obj is None:
            items.append(("context", phrase["entity_id"].removeprefix("scene-")))
            continue
        colour_named = ATTRIBUTES[obj.attribute] in phrase["phrase"].split()
        items.append(("object", obj.category, obj.attribute if colour_named else None))
    return items


def oracle_scores(scenes: list[SyntheticScene]) -> tuple[np.ndarray, np.ndarray]:
    """`(n_images, n_captions)` count of each caption's named items that each image holds, and the
    `(n_captions,)` image row of every caption."""
    captions, caption_to_image = [], []
    for row, scene in enumerate(scenes):
        for phrases in scene.phrases:
            captions.append(named_items(scene, phrases))
            caption_to_image.append(row)
    scores = np.zeros((len(scenes), len(captions)))
    for row, scene in enumerate(scenes):
        pairs = {(obj.category, obj.attribute) for obj in scene.objects}
        categories = {obj.category for obj in scene.objects}
        contexts = {CONTEXTS[index].name for index in scene.contexts}
        for column, items in enumerate(captions):
            for item in items:
                if item[0] == "context":
                    scores[row, column] += item[1] in contexts
                elif item[2] is None:
                    scores[row, column] += item[1] in categories
                else:
                    scores[row, column] += (item[1], item[2]) in pairs
    return scores, np.asarray(caption_to_image)


def oracle_retrieval(config: SyntheticCorpusConfig, split: str) -> dict[str, float]:
    """The oracle's R@K and rSum on one split, averaged over random tie-breaks."""
    scores, caption_to_image = oracle_scores(generate_scenes(config, split))
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(TIE_BREAK_DRAWS):
        jitter = rng.random(scores.shape) * 1e-3  # below the score step of 1: breaks ties only
        draws.append(evaluate_retrieval(scores + jitter, caption_to_image))
    keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
    return {key: float(np.mean([draw[key] for draw in draws])) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", action="append", help="a preset name; repeatable (default: none and hard)"
    )
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    args = parser.parse_args()
    presets = args.preset or [None, *SYNTHETIC_PRESETS]
    print(f"Caption-only oracle on the built-in synthetic corpus (seed {args.seed}), {args.split} split")
    print("| corpus | i2t R@1 / 5 / 10 | t2i R@1 / 5 / 10 | rSum |")
    print("|---|---|---|---|")
    for preset in presets:
        result = oracle_retrieval(SyntheticCorpusConfig(seed=args.seed, preset=preset), args.split)
        i2t = " / ".join(f"{result[f'i2t_r{k}']:.1f}" for k in (1, 5, 10))
        t2i = " / ".join(f"{result[f't2i_r{k}']:.1f}" for k in (1, 5, 10))
        print(f"| {preset or 'default'} | {i2t} | {t2i} | {result['rsum']:.1f} |")


if __name__ == "__main__":
    main()
