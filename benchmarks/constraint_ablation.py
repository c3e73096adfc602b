"""Constraints ablation on the built-in synthetic corpus: base vs +CCR vs +CCS vs +both, several seeds.

Each run trains one attention backbone (`--models`, presets below) with the sizes and schedule of
`configs/demo.yaml` (corpus seed fixed at 0, training seed varied) on a
smaller training split, without per-epoch validation, so the whole grid fits on a 2-core CPU; it scores
the last epoch's model and reads the test split's retrieval
rSum and attention precision / recall / F1 from the run's `eval_results_test.json`. Prints and writes
a markdown table of mean ± standard deviation over seeds.

    python benchmarks/constraint_ablation.py --out docs/ablation_results.md                 # the SCAN grid
    python benchmarks/constraint_ablation.py --models bfan-equal sgr --variants base +both   # other backbones
    python benchmarks/constraint_ablation.py --sweep 0.03 0.1 0.3 1 --seeds 0 --models scan-t2i   # weights
    python benchmarks/constraint_ablation.py --corpus habitat_object_leak=0 ...               # corpus knobs

All numbers are measured on the built-in synthetic corpus: never compare them with Flickr30K or COCO.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

from modeling_ccr.data.synthetic import SyntheticCorpusConfig
from modeling_ccr.training.experiment import parse_experiment_config, run_experiment

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# Each backbone's own options (its published attention settings); sizes and schedule come from the demo.
MODELS = {
    "scan-t2i": {"backbone": "scan", "direction": "t2i", "aggregation": "avg", "lambda_softmax": 9.0},
    "scan-i2t": {"backbone": "scan", "direction": "i2t", "aggregation": "avg", "lambda_softmax": 4.0},
    "bfan-equal": {"backbone": "bfan", "focal": "equal"},
    "bfan-prob": {"backbone": "bfan", "focal": "prob"},
    # SGRAF's similarity vectors scaled down with the demo's sizes (docs/spec.md §2: 256 at embed_dim 1024; demo 256).
    "sgr": {"backbone": "sgr", "sim_dim": 64},
    "saf": {"backbone": "saf", "sim_dim": 64},
    "damsm": {"backbone": "damsm"},
    "dvsa": {"backbone": "dvsa"},
    "vsepp": {"backbone": "vsepp"},  # no attention: base only, the non-attention reference
    "vse-infty": {"backbone": "vse_infty"},  # GPO pooling, no attention: base only
    "chan": {"backbone": "chan"},
    # configs/laps_tiny.yaml's slimming (half the regions kept, aggregated to a quarter), both directions.
    "laps": {"backbone": "laps", "keep_ratio": 0.5, "aggregation_ratio": 0.5, "direction": "both"},
}
# Backbones whose published recipe starts with one epoch of the summed hinge (configs/<name>_f30k.yaml):
# the same warm-up here, one epoch of this corpus at the demo's batch.
HINGE_WARMUP_EPOCHS = {"vse-infty": 1, "chan": 1, "laps": 1}
NO_ATTENTION = ("vsepp", "vse_infty")  # trained and scored without constraints (the config refuses them)
SIZE_KEYS = ("embed_dim", "word_dim")
VARIANTS = {"base": (0.0, 0.0), "+CCR": (1.0, 0.0), "+CCS": (0.0, 1.0), "+both": (1.0, 1.0)}
METRICS = ("rsum", "attention_precision", "attention_recall", "attention_f1")


def model_section(name: str, demo_model: dict, ccr: float, ccs: float, args: argparse.Namespace) -> dict:
    model = {**{k: demo_model[k] for k in SIZE_KEYS}, **MODELS[name]}
    model.update(ccr_weight=ccr, ccs_weight=ccs, ccs_mode=args.ccs_mode)
    n_regions = args.corpus.get("n_regions", SyntheticCorpusConfig.n_regions)
    if model["backbone"] in ("sgr", "saf"):  # batch norm over region positions: the corpus's region count
        model["n_regions"] = n_regions
    if model["backbone"] == "laps":  # its kept and aggregated token counts are shares of this
        model["num_patches"] = n_regions
    return model


def run_once(name: str, seed: int, ccr: float, ccs: float, args: argparse.Namespace, workdir: Path) -> dict:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["seed"] = seed
    raw["output_dir"] = str(workdir / f"{name}-{ccr}-{ccs}-{seed}")
    raw["data"]["synthetic"] = {"seed": 0, "train_images": args.train_images, **args.corpus}
    raw["model"] = model_section(name, raw["model"], ccr, ccs, args)
    if args.content_words_only:
        raw["model"]["constraint_skip_words"] = "function_words"
    # The last epoch's model is scored on test: no per-epoch validation, so the grid fits on a CPU.
    if name in HINGE_WARMUP_EPOCHS:
        pairs = args.train_images * raw["data"]["captions_per_image"]
        steps_per_epoch = -(-pairs // raw["training"]["per_device_train_batch_size"])
        raw["training"]["hinge_warmup_steps"] = HINGE_WARMUP_EPOCHS[name] * steps_per_epoch
    raw["training"].update(
        num_train_epochs=args.epochs,
        # Decay once, for the last epoch (a one-epoch run: the milestone is its end, so never).
        lr_decay_epochs=[max(1, args.epochs - 1)],
        disable_tqdm=True,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
    )
    model_dir = run_experiment(parse_experiment_config(raw, f"{DEMO_CONFIG} (ablation overrides)"))
    metrics = json.loads((model_dir / "eval_results_test.json").read_text())["metrics"]
    attention = metrics.get("attention", {})  # absent for backbones without cross-attention (VSE++)
    return {"rsum": metrics["rsum"], **{k: attention.get(k) for k in METRICS[1:]}}


def summarize(values: list[float | None]) -> str:
    if None in values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}" if values[0] <= 1 else f"{values[0]:.1f}"
    mean, spread = statistics.mean(values), statistics.stdev(values)
    return f"{mean:.3f} ± {spread:.3f}" if mean <= 1 else f"{mean:.1f} ± {spread:.1f}"


def parse_corpus(pairs: list[str]) -> dict:
    corpus = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        corpus[key] = yaml.safe_load(value)
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["scan-t2i", "scan-i2t"], choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--weight", type=float, default=0.1, help="w_ccr = w_ccs of the enabled constraints")
    parser.add_argument(
        "--sweep", type=float, nargs="*", default=None, help="weights of +both to sweep instead"
    )
    parser.add_argument("--ccs-mode", default="swap_keys", choices=["swap_keys", "swap_query", "swap_image"])
    parser.add_argument("--content-words-only", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=1200)
    parser.add_argument(
        "--corpus", nargs="*", default=[], metavar="KNOB=VALUE", help="SyntheticCorpusConfig overrides"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    parser.add_argument("--out", type=Path, default=None, help="append the table to this markdown file")
    args = parser.parse_args()
    args.corpus = parse_corpus(args.corpus)

    if args.sweep:
        grid = [(f"+both w={w:g}", w, w) for w in args.sweep]
    else:
        grid = [
            (name, a * args.weight, b * args.weight)
            for name, (a, b) in VARIANTS.items()
            if name in args.variants
        ]
    started = time.time()
    cells = [
        (model, name, ccr, ccs)
        for model in args.models
        for name, ccr, ccs in grid
        if MODELS[model]["backbone"] not in NO_ATTENTION or ccr == ccs == 0
    ]
    with tempfile.TemporaryDirectory(prefix="ccr-ablation-") as tmp:
        # Small CPU matmuls scale poorly over threads: --jobs single-threaded runs side by side go faster.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            futures = {
                (model, name, seed): pool.submit(run_once, model, seed, ccr, ccs, args, Path(tmp))
                for model, name, ccr, ccs in cells
                for seed in args.seeds
            }
            rows = []
            for model, name, _, _ in cells:
                results = [futures[(model, name, seed)].result() for seed in args.seeds]
                rows.append([model, name] + [summarize([r[m] for r in results]) for m in METRICS])
                print(" | ".join(rows[-1]), flush=True)

    command = "python benchmarks/constraint_ablation.py " + " ".join(sys.argv[1:])
    header = "| model | constraints | rSum | attention P | attention R | attention F1 |\n|---|---|---|---|---|---|\n"
    table = header + "".join("| " + " | ".join(row) + " |\n" for row in rows)
    setting = (
        f"Built-in synthetic corpus (seed 0, {args.train_images} training images, test split "
        f"{args.corpus.get('test_images', SyntheticCorpusConfig.test_images)} images), "
        f"{args.epochs} epochs, seeds {args.seeds}, weight {args.weight if not args.sweep else 'swept'}, "
        f"CCS mode {args.ccs_mode}, content words only: {args.content_words_only}, corpus overrides "
        f"{args.corpus or 'none'}; mean ± std over seeds; {time.time() - started:.0f} s on this machine.\n"
    )
    report = f"\n`{command}`\n\n{setting}\n{table}"
    print(report)
    if args.out:
        with args.out.open("a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
