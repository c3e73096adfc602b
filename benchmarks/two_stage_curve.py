"""Recall against time of two-stage retrieval (`ccr evaluate --rerank-k K`) over K, against exact scoring.

Data: the built-in synthetic corpus only (its test split; never Flickr30K or COCO). For each backbone it
trains a small model with the library's own training path (`run_experiment` on configs/demo.yaml with a
reduced budget, no validation passes), or takes a trained model folder with --model. It then encodes the
test split once and, from one run, prints for exact scoring (`model.similarity` of every pair), for the
first stage alone (pooled embeddings, no re-ranking) and for each K: R@1/5/10 in both directions, rSum,
the share of the gallery's pairs the model scored, and the seconds of the scoring (encoding excluded,
the same for every row). Times are the minimum of --repeats runs.

    OMP_NUM_THREADS=1 python benchmarks/two_stage_curve.py --threads 1 [--backbones scan,sgr]
        [--model scan=runs/two_stage_curve/scan/model] [--ks 1,5,10,20,50,128]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modeling_ccr.artifacts.loading import load_matcher
from modeling_ccr.data.corpora import load_evaluation_split
from modeling_ccr.data.pairs import caption_table
from modeling_ccr.evaluation.gallery import encode_captions, encode_images
from modeling_ccr.evaluation.two_stage import pooled_embeddings, two_stage_similarity
from modeling_ccr.metrics.retrieval import evaluate_retrieval
from modeling_ccr.training.experiment import (
    load_yaml,
    parse_experiment_config,
    run_experiment,
)

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
# 50 steps of the demo's batch of 128 (0.43 of an epoch) and no validation passes: minutes on a loaded
# 2-core CPU.
REDUCED_TRAINING = {
    "num_train_epochs": 1,
    "max_steps": 50,
    "lr_decay_epochs": None,
    "eval_strategy": "no",
    "save_strategy": "no",
    "load_best_model_at_end": False,
    "logging_steps": 20,
}
# SGR, the slow backbone two-stage retrieval is for, at a size that trains in minutes on the same CPU:
# a smaller similarity dimension and batch than SGRAF's (256, 128), a bounded number of steps, no
# constraints, and a test split of 100 images (500 captions) so that exact scoring stays affordable.
# From scratch its hardest-negative hinge sits on the plateau of equal scores (docs/ablation.md), so the
# first steps sum the hinge over negatives.
SGR_MODEL = {"backbone": "sgr", "embed_dim": 256, "word_dim": 128, "sim_dim": 64, "n_regions": 24}
SGR_TRAINING = {
    "per_device_train_batch_size": 32,
    "max_steps": 150,
    "learning_rate": 5.0e-4,
    "hinge_warmup_steps": 100,
}
SGR_TEST_IMAGES = 100


def training_config(backbone: str, output_dir: Path) -> dict[str, Any]:
    """The demo's run configuration with the reduced budget, as a raw mapping."""
    raw = load_yaml(DEMO_CONFIG.read_text(encoding="utf-8"))
    raw["output_dir"] = str(output_dir)
    raw["training"] = {**raw["training"], **REDUCED_TRAINING}
    if backbone == "sgr":
        raw["model"] = dict(SGR_MODEL)
        raw["training"] = {**raw["training"], **SGR_TRAINING}
        raw["data"]["synthetic"] = {**(raw["data"]["synthetic"] or {}), "test_images": SGR_TEST_IMAGES}
    elif backbone != "scan":
        raise ValueError(f"unknown backbone {backbone!r}: expected scan or sgr")
    return raw


def train(backbone: str, workdir: Path) -> Path:
    """Train the reduced-budget model of `backbone` under workdir and return its model folder."""
    raw = training_config(backbone, workdir / backbone)
    start = time.perf_counter()
    model_dir = run_experiment(
        parse_experiment_config(raw, f"{DEMO_CONFIG} (reduced budget)"), overwrite=True
    )
    print(f"trained {backbone} in {time.perf_counter() - start:.0f} s -> {model_dir}")
    return model_dir


def min_time(function: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Shortest of `repeats` runs and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


class ScoredPairs:
    """Counts the pairs a model's `similarity` scores (wraps the bound method in place)."""

    def __init__(self, model: torch.nn.Module):
        self.pairs = 0
        self.similarity = model.similarity

    def __call__(self, image_embeds, region_mask, text_embeds, word_mask, **options) -> torch.Tensor:
        self.pairs += image_embeds.shape[0] * text_embeds.shape[0]
        return self.similarity(image_embeds, region_mask, text_embeds, word_mask, **options)


def curve(model_dir: Path, ks: list[int], repeats: int) -> None:
    """Print the exact, first-stage and two-stage rows of one model on its corpus's test split."""
    model, tokenizer = load_matcher(model_dir)
    dataset, dataset_name = load_evaluation_split(model_dir, None, "test")
    captions, caption_to_image = caption_table(dataset)
    with torch.no_grad():
        image_embeds, region_mask = encode_images(model, dataset)
        text_embeds, word_mask = encode_captions(model, tokenizer, captions)
    n_images, n_captions = image_embeds.shape[0], text_embeds.shape[0]
    gallery = (image_embeds, region_mask, text_embeds, word_mask)
    print(
        f"\n## {model.config.model_type} ({model_dir}) on the {dataset_name}, test split: "
        f"{n_images} images x {n_captions} captions"
    )
    print(
        f"{'setting':>16s} {'i2t R@1/5/10':>18s} {'t2i R@1/5/10':>18s} {'rSum':>6s} {'pairs':>6s} {'seconds':>8s}"
    )
    counter = ScoredPairs(model)
    model.similarity = counter
    try:
        rows: list[tuple[str, Callable[[], torch.Tensor]]] = [
            ("exact", lambda: model.similarity(*gallery)),
            ("first stage", lambda: first_stage(image_embeds, region_mask, text_embeds, word_mask)),
        ]
        rows += [(f"k = {k}", lambda k=k: two_stage_similarity(model, *gallery, k)) for k in ks]
        for label, score in rows:
            counter.pairs = 0
            seconds, similarity = min_time(score, repeats)
            share = counter.pairs / repeats / (n_images * n_captions)
            print_row(
                label, evaluate_retrieval(similarity, caption_to_image, protocol="full"), share, seconds
            )
    finally:
        del model.similarity


def first_stage(image_embeds, region_mask, text_embeds, word_mask) -> torch.Tensor:
    """The first stage's scores alone: inner products of the pooled embeddings `(n_images, n_captions)`."""
    return pooled_embeddings(image_embeds, region_mask) @ pooled_embeddings(text_embeds, word_mask).T


def print_row(label: str, metrics: dict, share: float, seconds: float) -> None:
    recalls = {d: "/".join(f"{metrics[f'{d}_r{k}']:.1f}" for k in (1, 5, 10)) for d in ("i2t", "t2i")}
    print(
        f"{label:>16s} {recalls['i2t']:>18s} {recalls['t2i']:>18s} {metrics['rsum']:6.1f} "
        f"{100 * share:5.1f}% {seconds:8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="scan,sgr", help="comma-separated: scan, sgr")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="BACKBONE=DIR",
        help="use this trained model folder for the backbone instead of training one",
    )
    parser.add_argument("--ks", default="1,5,10,20,50,128")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("runs/two_stage_curve"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    given = dict(item.split("=", 1) for item in args.model)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; "
        "data: built-in synthetic corpus (not Flickr30K/COCO)"
    )
    ks = [int(k) for k in args.ks.split(",")]
    for backbone in args.backbones.split(","):
        model_dir = Path(given[backbone]) if backbone in given else train(backbone, args.workdir)
        curve(model_dir, ks, args.repeats)


if __name__ == "__main__":
    main()
