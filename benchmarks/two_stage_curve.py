"""Recall against time of two-stage retrieval (`ccr evaluate --rerank-k K`) over K, against exact scoring.

Data: the built-in synthetic corpus only (never Flickr30K or COCO), with a test split of --test-images
images (5 captions each: 1000 is Flickr30K test's size, 5000 COCO 5K's). For each backbone it trains a
small model with the library's own training path (`run_experiment` on configs/demo.yaml with a reduced
budget, no validation passes; --joint-head POOLING trains it with a global head, `model.global_head`), or
takes a trained model folder with --model. A model that carries a global head uses it as the "head"
first stage (--head auto, the default; what `ccr evaluate --rerank-k` does); otherwise (or with --head
mean|gpo) a global head (`models/global_head.py`) is fitted alone on the frozen fragment embeddings of
the training split, distilling the model's in-batch ranking (--head-steps; --head none skips it). It encodes the test split once and prints,
from one run, for exact scoring (`model.similarity` of every pair), for each first stage alone (the
mean-pooled fragments; the head) and for each K with each first stage: R@1/5/10 in both directions,
rSum and its share of exact, the share of the gallery's pairs the model scored, the seconds of the scoring
(encoding excluded, the same for every row; the first stage included) and their share of exact time, and
the cost of a re-ranked pair against an exactly scored one. With --per-image-k it also times the previous
per-image re-ranking (one `model.similarity` call per image) at that K. Times are the minimum of
--repeats runs; the device is the model's (--device).

--query-sample N (seeded by --sample-seed) measures a gallery too large to score exactly: N caption
queries (t2i, each against ALL images) and N * n_images / n_captions image queries (i2t, each against ALL
captions; N/5 with 5 captions an image), drawn without replacement. Each sampled query's rank is its
rank in the whole gallery, so R@K over the sample is an unbiased estimate of the full gallery's. Exact
scoring scores the sampled queries' rows and columns; two-stage shortlists over the whole gallery (every
image's K captions and every caption's K images, so a query's re-ranked set is the one it has without
sampling) and re-ranks the shortlisted pairs of the sampled queries. Both times are those of the same
sampled queries (measured, not extrapolated); the first stage's time is the whole gallery's, and each
two-stage row is followed by where its time went (first-stage embeddings, shortlist, re-ranking).

    python benchmarks/two_stage_curve.py --backbones scan --test-images 1000 [--model scan=DIR]
        [--ks 8,16,32,64,128] [--head auto|model|mean|gpo|none] [--joint-head gpo] [--head-steps 200]
        [--device cuda] [--query-sample 1000 [--sample-seed 0]]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from modeling_ccr.artifacts.loading import load_matcher
from modeling_ccr.data.corpora import DataConfig, load_corpus
from modeling_ccr.data.pairs import caption_table
from modeling_ccr.evaluation.gallery import encode_captions, encode_images
from modeling_ccr.evaluation.two_stage import (
    first_stage_embeddings,
    has_global_head,
    head_embeddings,
    pooled_embeddings,
    rerank_pair_scores,
    shortlisted_pairs,
    two_stage_similarity,
)
from modeling_ccr.metrics.retrieval import evaluate_retrieval, recall_metrics
from modeling_ccr.models.global_head import GlobalHead, fit_global_head
from modeling_ccr.training.experiment import load_yaml, parse_experiment_config, run_experiment

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
# constraints. From scratch its hardest-negative hinge sits on the plateau of equal scores
# (docs/ablation.md), so the first steps sum the hinge over negatives.
SGR_MODEL = {"backbone": "sgr", "embed_dim": 256, "word_dim": 128, "sim_dim": 64, "n_regions": 24}
SGR_TRAINING = {
    "per_device_train_batch_size": 32,
    "max_steps": 150,
    "learning_rate": 5.0e-4,
    "hinge_warmup_steps": 100,
}


def training_config(
    backbone: str, output_dir: Path, test_images: int, joint_head: dict | None = None
) -> dict[str, Any]:
    """The demo's run configuration with the reduced budget, as a raw mapping; joint_head: the model's
    `global_head` setting (trained with it), None for none."""
    raw = load_yaml(DEMO_CONFIG.read_text(encoding="utf-8"))
    raw["output_dir"] = str(output_dir)
    raw["training"] = {**raw["training"], **REDUCED_TRAINING}
    raw["data"]["synthetic"] = {**(raw["data"]["synthetic"] or {}), "test_images": test_images}
    if backbone == "sgr":
        raw["model"] = dict(SGR_MODEL)
        raw["training"] = {**raw["training"], **SGR_TRAINING}
    elif backbone != "scan":
        raise ValueError(f"unknown backbone {backbone!r}: expected scan or sgr")
    if joint_head is not None:
        raw["model"] = {**raw["model"], "global_head": joint_head}
    return raw


def train(backbone: str, workdir: Path, test_images: int, joint_head: dict | None = None) -> Path:
    """Train the reduced-budget model of `backbone` under workdir and return its model folder."""
    raw = training_config(backbone, workdir / backbone, test_images, joint_head)
    start = time.perf_counter()
    model_dir = run_experiment(
        parse_experiment_config(raw, f"{DEMO_CONFIG} (reduced budget)"), overwrite=True
    )
    print(f"trained {backbone} in {time.perf_counter() - start:.0f} s -> {model_dir}")
    return model_dir


def corpus_splits(model_dir: Path, test_images: int):
    """The recorded corpus of a model folder with a test split of `test_images` images: (corpus, name)."""
    run = yaml.safe_load((model_dir / "training_config.yaml").read_text(encoding="utf-8"))
    data = dict(run["data"])
    data["synthetic"] = {**(data.get("synthetic") or {}), "test_images": test_images}
    return load_corpus(
        DataConfig.from_mapping(data, str(model_dir / "training_config.yaml")), run.get("seed", 0)
    )


def min_time(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Shortest of `repeats` runs and the last result (device work waited for)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        result = function()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class ScoredPairs:
    """Counts the pairs the re-ranking scores (wraps `two_stage.rerank_pair_scores` in place)."""

    def __init__(self):
        import modeling_ccr.evaluation.two_stage as two_stage

        self.module, self.pairs, self.original = two_stage, 0, two_stage.rerank_pair_scores

        def counted(model, image_embeds, region_mask, text_embeds, word_mask, images, captions, **options):
            self.pairs += len(images)
            return self.original(
                model, image_embeds, region_mask, text_embeds, word_mask, images, captions, **options
            )

        two_stage.rerank_pair_scores = counted

    def restore(self) -> None:
        self.module.rerank_pair_scores = self.original


def per_image_two_stage(
    model, image_embeds, region_mask, text_embeds, word_mask, k, first_stage
) -> torch.Tensor:
    """The previous re-ranking: one `model.similarity` call per image on its shortlisted captions."""
    rerank = shortlisted_pairs(*first_stage, k)
    rows = [rerank[image].nonzero().squeeze(1) for image in range(rerank.shape[0])]
    scored = [
        model.similarity(image_embeds[i : i + 1], region_mask[i : i + 1], text_embeds[c], word_mask[c])[0]
        for i, c in enumerate(rows)
    ]
    exact = torch.zeros(rerank.shape, device=rerank.device)
    exact[rerank] = torch.cat(scored)  # row-major order of the True entries, as `rows` lists them
    return torch.where(rerank, exact, exact[rerank].min() - 3.0 + first_stage[0] @ first_stage[1].T)


def train_head(model, corpus, tokenizer, args) -> tuple[GlobalHead, float]:
    """A global head fitted on the frozen fragment embeddings of the training split; its training seconds."""
    train_split = corpus["train"]
    captions, caption_to_image = caption_table(train_split)
    with torch.no_grad():
        image_embeds, region_mask = encode_images(model, train_split)
        text_embeds, word_mask = encode_captions(model, tokenizer, captions)
    head = GlobalHead(
        {
            "embed_dim": image_embeds.shape[-1],
            "pooling": args.head,
            "distill_weight": args.distill_weight,
            "distill_temperature": args.distill_temperature,
        }
    ).to(image_embeds.device)
    start = time.perf_counter()
    losses = fit_global_head(
        head,
        image_embeds,
        region_mask,
        text_embeds,
        word_mask,
        torch.as_tensor(caption_to_image),
        fine_scores=model.score_pairs,
        steps=args.head_steps,
        batch_size=args.head_batch,
        learning_rate=args.head_lr,
    )
    seconds = time.perf_counter() - start
    print(
        f"global head ({args.head} pooling, distill weight {args.distill_weight}): {args.head_steps} steps of "
        f"{args.head_batch} on the training split in {seconds:.0f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    return head, seconds


# -- a sample of the queries (--query-sample) -------------------------------------------------------------


def query_sample(n_images: int, n_captions: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded sample without replacement: sorted caption indices `(n,)` and image indices
    `(max(1, round(n * n_images / n_captions)),)` (n/5 with 5 captions an image); with n = n_captions
    both are every index, in order."""
    if not 1 <= n <= n_captions:
        raise SystemExit(f"--query-sample: expected 1 to {n_captions} caption queries, found {n}")
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randperm(n_captions, generator=generator)[:n].sort().values
    n_image_queries = min(n_images, max(1, round(n * n_images / n_captions)))
    images = torch.randperm(n_images, generator=generator)[:n_image_queries].sort().values
    return captions, images


def sampled_ranks(
    columns: torch.Tensor,
    rows: torch.Tensor,
    caption_to_image: torch.Tensor,
    captions: torch.Tensor,
    images: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-gallery ranks of the sampled queries, with `retrieval_ranks`' pessimistic ties.

    columns `(n_images, n)`: every image's score with each sampled caption `captions` `(n,)`; rows
    `(m, n_captions)`: each sampled image `images` `(m,)` with every caption; caption_to_image
    `(n_captions,)`. Returns i2t ranks `(m,)` (the rank of the image's best own caption) and t2i ranks
    `(n,)`.
    """
    device = columns.device
    caption_to_image = torch.as_tensor(caption_to_image, device=device)
    captions, images = captions.to(device), images.to(device)
    true_image = caption_to_image[captions]
    true_scores = columns[true_image, torch.arange(len(captions), device=device)]
    wrong = torch.arange(columns.shape[0], device=device)[:, None] != true_image[None, :]
    t2i = 1 + ((columns >= true_scores[None, :]) & wrong).sum(dim=0)
    own = caption_to_image[None, :] == images[:, None]
    best_own = rows.masked_fill(~own, -float("inf")).amax(dim=1)
    i2t = 1 + ((rows >= best_own[:, None]) & ~own).sum(dim=1)
    return i2t.cpu(), t2i.cpu()


def sampled_exact(model, gallery, captions: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Exact scores of the sampled queries: columns `(n_images, n)` of the sampled captions and rows
    `(m, n_captions)` of the sampled images (gallery as `model.similarity`'s inputs)."""
    image_embeds, region_mask, text_embeds, word_mask = gallery
    captions, images = captions.to(image_embeds.device), images.to(image_embeds.device)
    columns = model.similarity(image_embeds, region_mask, text_embeds[captions], word_mask[captions])
    rows = model.similarity(image_embeds[images], region_mask[images], text_embeds, word_mask)
    return columns, rows


def sampled_first_stage(stage_embeds, gallery, captions, images) -> tuple[torch.Tensor, ...]:
    """First-stage scores alone of the sampled queries (columns, rows as `sampled_exact`)."""
    global_images, global_captions = first_stage_embeddings(*gallery, stage_embeds)
    captions, images = captions.to(global_images.device), images.to(global_images.device)
    return global_images @ global_captions[captions].T, global_images[images] @ global_captions.T


def sampled_two_stage(
    model,
    gallery,
    k: int,
    stage: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    captions: torch.Tensor,
    images: torch.Tensor,
    phases: dict | None = None,
) -> tuple[torch.Tensor, ...]:
    """Two-stage scores of the sampled queries (columns, rows as `sampled_exact`), each query's ranking
    that of `two_stage_similarity` on the whole gallery: the shortlists are the whole gallery's (a pair
    is re-ranked when the image is among the caption's k or the caption among the image's k), the
    shortlisted pairs of the sampled queries get the model's exact scores, every other pair its
    first-stage score shifted below them. phases: filled with the seconds of the first-stage embeddings
    (`embed`), the shortlist (`shortlist`) and the re-ranking (`rerank`), and the re-ranked `pairs`."""
    start = time.perf_counter()
    global_images, global_captions = first_stage_embeddings(*gallery, stage())
    embedded = time.perf_counter()
    device = global_images.device
    captions, images = captions.to(device), images.to(device)
    rerank = shortlisted_pairs(global_images, global_captions, k)
    sampled = torch.zeros_like(rerank)
    sampled[:, captions] = True
    sampled[images] = True
    image_index, caption_index = (rerank & sampled).nonzero(as_tuple=True)
    shortlisted = time.perf_counter()
    exact = rerank_pair_scores(model, *gallery, image_index, caption_index)
    reranked = time.perf_counter()
    # As two_stage_similarity: first-stage cosines in [-1, 1] shifted below every re-ranked score, so a
    # query's re-ranked candidates come first in exact order and the rest follow in first-stage order.
    shift = exact.min() - 3.0 if len(exact) else 0.0
    columns = global_images @ global_captions[captions].T + shift
    rows = global_images[images] @ global_captions.T + shift
    column_of = torch.full((len(global_captions),), -1, dtype=torch.long, device=device)
    column_of[captions] = torch.arange(len(captions), device=device)
    row_of = torch.full((len(global_images),), -1, dtype=torch.long, device=device)
    row_of[images] = torch.arange(len(images), device=device)
    in_column, in_row = column_of[caption_index] >= 0, row_of[image_index] >= 0
    columns[image_index[in_column], column_of[caption_index[in_column]]] = exact[in_column]
    rows[row_of[image_index[in_row]], caption_index[in_row]] = exact[in_row]
    if phases is not None:
        phases.update(
            embed=embedded - start,
            shortlist=shortlisted - embedded,
            rerank=reranked - shortlisted,
            pairs=len(exact),
        )
    return columns, rows


def sampled_metrics(scores, caption_to_image, captions, images) -> dict:
    """Recall metrics of the sampled queries from (columns, rows)."""
    return recall_metrics(*sampled_ranks(*scores, caption_to_image, captions, images))


def sampled_curve(model, gallery, caption_to_image, stages: dict, args: argparse.Namespace) -> None:
    """The rows of `curve` measured on a seeded sample of the queries (--query-sample)."""
    n_images, n_captions = gallery[0].shape[0], gallery[2].shape[0]
    captions, images = query_sample(n_images, n_captions, args.query_sample, args.sample_seed)
    exact_pairs = n_images * len(captions) + len(images) * n_captions
    print(
        f"query sample (seed {args.sample_seed}): {len(captions)} caption queries (t2i, against all "
        f"{n_images} images) and {len(images)} image queries (i2t, against all {n_captions} captions); "
        f"exact scoring of the sample: {exact_pairs} pairs; 'pairs scored' is a share of these"
    )
    print(
        "| setting | i2t R@1/5/10 | t2i R@1/5/10 | rSum | % of exact rSum | pairs scored | seconds "
        "| time / exact | re-ranked pair / exact pair |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    exact_seconds, exact = min_time(lambda: sampled_exact(model, gallery, captions, images), args.repeats)
    exact_metrics = sampled_metrics(exact, caption_to_image, captions, images)
    print_row("exact", exact_metrics, exact_metrics, 1.0, exact_seconds, exact_seconds, None)
    splits = []
    for stage_name, stage in stages.items():
        seconds, scores = min_time(
            lambda stage=stage: sampled_first_stage(stage(), gallery, captions, images), args.repeats
        )
        metrics = sampled_metrics(scores, caption_to_image, captions, images)
        print_row(f"first stage: {stage_name}", metrics, exact_metrics, 0.0, seconds, exact_seconds, None)
        for k in args.ks:
            phases: dict = {}
            with torch.no_grad():
                seconds, scores = min_time(
                    partial(sampled_two_stage, model, gallery, k, stage, captions, images, phases),
                    args.repeats,
                )
            metrics = sampled_metrics(scores, caption_to_image, captions, images)
            pairs = phases["pairs"]
            pair_cost = (seconds / pairs) / (exact_seconds / exact_pairs)
            label = f"{stage_name}, k = {k}"
            print_row(label, metrics, exact_metrics, pairs / exact_pairs, seconds, exact_seconds, pair_cost)
            splits.append((label, phases))
    print("\nwhere the two-stage time went (last run of each row; seconds):")
    print("| setting | first-stage embeddings | shortlist (whole gallery) | re-ranking | pairs re-ranked |")
    print("|---|---|---|---|---|")
    for label, phases in splits:
        print(
            f"| {label} | {phases['embed']:.2f} | {phases['shortlist']:.2f} | {phases['rerank']:.2f} | "
            f"{phases['pairs']} |"
        )


def curve(model_dir: Path, args: argparse.Namespace) -> None:
    """Print the exact, first-stage and two-stage rows of one model on its corpus's test split."""
    model, tokenizer = load_matcher(model_dir)
    model.to(args.device)
    corpus, dataset_name = corpus_splits(model_dir, args.test_images)
    head, own_head = None, args.head == "model" or (args.head == "auto" and has_global_head(model))
    if args.head == "model" and not has_global_head(model):
        raise SystemExit(f"--head model: {model_dir} has no global head (train it with --joint-head)")
    if own_head:
        print(
            f"first stage 'head': the model's own global head, trained with it ({model.config.global_head})"
        )
    elif args.head != "none":
        args.head = "mean" if args.head == "auto" else args.head
        head, _ = train_head(model, corpus, tokenizer, args)
    dataset = corpus["test"]
    captions, caption_to_image = caption_table(dataset)
    with torch.no_grad():
        image_embeds, region_mask = encode_images(model, dataset)
        text_embeds, word_mask = encode_captions(model, tokenizer, captions)
    n_images, n_captions = image_embeds.shape[0], text_embeds.shape[0]
    gallery = (image_embeds, region_mask, text_embeds, word_mask)
    print(
        f"\n## {model.config.model_type} ({model_dir}) on the {dataset_name}, test split: "
        f"{n_images} images x {n_captions} captions, device {image_embeds.device}"
    )

    def mean_stage():
        return pooled_embeddings(image_embeds, region_mask), pooled_embeddings(text_embeds, word_mask)

    def head_stage():
        if own_head:
            return head_embeddings(model, *gallery)
        with torch.no_grad():
            return head.embed_images(image_embeds, region_mask), head.embed_texts(text_embeds, word_mask)

    def two_stage(k, stage):
        return two_stage_similarity(model, *gallery, k, global_embeds=stage())

    stages = {"mean-pooled": mean_stage} if "mean" in args.first_stages else {}
    if head is not None or own_head:
        stages["head"] = head_stage
    if args.query_sample is not None:
        with torch.no_grad():
            sampled_curve(model, gallery, torch.as_tensor(caption_to_image), stages, args)
        return
    print(
        "| setting | i2t R@1/5/10 | t2i R@1/5/10 | rSum | % of exact rSum | pairs scored | seconds "
        "| time / exact | re-ranked pair / exact pair |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    exact_seconds, exact = min_time(lambda: model.similarity(*gallery), args.repeats)
    exact_metrics = evaluate_retrieval(exact.cpu(), caption_to_image, protocol="full")
    total = n_images * n_captions
    print_row("exact", exact_metrics, exact_metrics, 1.0, exact_seconds, exact_seconds, None)
    for stage_name, stage in stages.items():

        def stage_scores(stage=stage):
            images, texts = stage()
            return images @ texts.T

        seconds, scores = min_time(stage_scores, args.repeats)
        metrics = evaluate_retrieval(scores.cpu(), caption_to_image, protocol="full")
        print_row(f"first stage: {stage_name}", metrics, exact_metrics, 0.0, seconds, exact_seconds, None)
        for k in args.ks:
            runs = [(f"{stage_name}, k = {k}", args.repeats, partial(two_stage, k, stage))]
            if k == args.per_image_k:
                per_image = partial(per_image_two_stage, model, *gallery, k)
                runs.append(
                    (f"{stage_name}, k = {k}, per image (previous)", 1, lambda f=per_image, s=stage: f(s()))
                )
            for label, repeats, function in runs:
                counter = ScoredPairs()
                try:
                    with torch.no_grad():
                        seconds, scores = min_time(function, repeats)
                finally:
                    counter.restore()
                pairs = counter.pairs / repeats or int(shortlisted_pairs(*stage(), k).sum())
                metrics = evaluate_retrieval(scores.cpu(), caption_to_image, protocol="full")
                pair_cost = (seconds / pairs) / (exact_seconds / total)
                print_row(label, metrics, exact_metrics, pairs / total, seconds, exact_seconds, pair_cost)


def print_row(label, metrics, exact, share, seconds, exact_seconds, pair_cost) -> None:
    recalls = {d: "/".join(f"{metrics[f'{d}_r{k}']:.1f}" for k in (1, 5, 10)) for d in ("i2t", "t2i")}
    cost = "" if pair_cost is None else f"{pair_cost:.2f}"
    print(
        f"| {label} | {recalls['i2t']} | {recalls['t2i']} | {metrics['rsum']:.1f} | "
        f"{100 * metrics['rsum'] / exact['rsum']:.1f}% | {100 * share:.1f}% | {seconds:.2f} | "
        f"{seconds / exact_seconds:.3f} | {cost} |",
        flush=True,
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
    parser.add_argument(
        "--test-images", type=int, default=1000, help="1000: Flickr30K test size; 5000: COCO 5K"
    )
    parser.add_argument("--ks", default="8,16,32,64,128")
    parser.add_argument("--first-stages", default="mean,head", help="comma-separated: mean, head")
    parser.add_argument(
        "--head",
        default="auto",
        choices=["auto", "model", "mean", "gpo", "none"],
        help="the 'head' first stage: the model's own global head (model; auto when it has one), or a head "
        "of this pooling fitted alone on frozen embeddings (mean, gpo; auto: mean), or none",
    )
    parser.add_argument(
        "--joint-head",
        default=None,
        choices=["mean", "gpo"],
        help="train the model with a global head of this pooling (model.global_head, with --distill-weight)",
    )
    parser.add_argument("--head-steps", type=int, default=200)
    parser.add_argument("--head-batch", type=int, default=128)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--distill-temperature", type=float, default=0.05)
    parser.add_argument(
        "--per-image-k", type=int, default=None, help="also time per-image re-ranking at this K"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--query-sample",
        type=int,
        default=None,
        metavar="N",
        help="measure on N sampled caption queries and N/5 image queries, each against the whole gallery",
    )
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of --query-sample")
    parser.add_argument("--workdir", type=Path, default=Path("runs/two_stage_curve"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.ks = [int(k) for k in args.ks.split(",")]
    if args.query_sample is not None and args.per_image_k is not None:
        raise SystemExit("--per-image-k: not measured with --query-sample (it re-ranks whole image rows)")
    given = dict(item.split("=", 1) for item in args.model)
    joint_head = None
    if args.joint_head is not None:
        joint_head = {"pooling": args.joint_head, "distill_weight": args.distill_weight}
        joint_head["distill_temperature"] = args.distill_temperature
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"device: {device} ({name}), {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, load average {os.getloadavg()[0]:.1f}; data: built-in synthetic corpus "
        "(not Flickr30K/COCO)"
    )
    for backbone in args.backbones.split(","):
        model_dir = (
            Path(given[backbone])
            if backbone in given
            else train(backbone, args.workdir, args.test_images, joint_head)
        )
        curve(model_dir, args)


if __name__ == "__main__":
    main()
