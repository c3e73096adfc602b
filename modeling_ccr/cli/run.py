"""`ccr demo`, `ccr train`, `ccr configs`, `ccr evaluate`, `ccr visualize`, `ccr ensemble`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidValueError
from ..resources import published_configs, resolve_config

DEMO_CONFIG = "demo"  # a published config (configs/demo.yaml)
# `ccr demo --corpus digit-scenes` trains the base cell of this grid (configs/ablation_digit_scenes_e2e.yaml).
DIGIT_SCENES_GRID = "ablation_digit_scenes_e2e"
# ...twice, into DIGIT_SCENES_DEMO_DIR/<name>: plain (the grid's base variant) and constrained (CCR + CCS);
# the app opens these two by default (modeling_ccr/apps/gradio_app.py).
DIGIT_SCENES_DEMO_DIR = "runs/demo_digit_scenes"
DIGIT_SCENES_DEMO_MODELS = {"plain": "base", "constrained": "+both"}
# Model options that tell published configs of one backbone apart, in the order they are shown.
SUMMARY_OPTIONS = ("direction", "aggregation", "focal", "sgr_steps")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["training.max_steps=100", ...]` -> `{"training.max_steps": 100}` (values parsed as YAML, `1e-3`
    as a float)."""
    from ..training.run_config import load_yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidValueError(f"--set expects KEY=VALUE (e.g. training.max_steps=100), got {pair!r}")
        try:
            overrides[key] = load_yaml(value)
        except yaml.YAMLError as err:
            raise InvalidValueError(f"--set {key}: the value {value!r} is not valid YAML") from err
    return overrides


def print_results(metrics: dict, title: str) -> None:
    from ..metrics.retrieval import chance_metrics, format_results_table

    images_per_fold = metrics["n_images"] // metrics.get("n_folds", 1)
    captions_per_image = metrics["n_captions"] // metrics["n_images"]
    print(f"\n{title}")
    print(format_results_table(metrics, chance_metrics(images_per_fold, captions_per_image)))


def format_attention(attention: dict, name: str) -> str:
    return (
        f"attention of {name} ({attention['direction']}, {attention['n_words']} grounded words): "
        f"precision {attention['attention_precision']:.3f}  recall {attention['attention_recall']:.3f}  "
        f"F1 {attention['attention_f1']:.3f}"
    )


def format_drift(drift: dict, name: str) -> str:
    def share(key: str) -> str:
        return "n/a" if drift[key] is None else f"{100 * drift[key]:.1f} %"

    return (
        f"where {name}'s digit words attend ({drift['head_words']} words): own digit {share('own_region_share')} "
        f"(uniform {share('own_uniform_share')}), habitat texture {share('habitat_share')}, unrelated texture "
        f"{share('unrelated_share')}, drift (habitat - unrelated) {share('drift')}"
    )


def command_train(args: argparse.Namespace) -> Path:
    from ..training.experiment import load_experiment_config, run_experiment

    config = load_experiment_config(resolve_config(args.config), parse_overrides(args.set))
    model_dir = run_experiment(config, resume_from_checkpoint=args.resume or None, overwrite=args.overwrite)
    print(f"\nSaved the best checkpoint to {model_dir}")
    return model_dir


def add_train_parser(commands) -> None:
    train = commands.add_parser("train", help="train from a YAML run configuration")
    train.add_argument(
        "config", help="a YAML run configuration, or the name of a published one (`ccr configs`)"
    )
    add_set_flag(train)
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        help="resume from the newest complete checkpoint of output_dir (or from a given one)",
    )
    add_overwrite_flag(train)
    train.set_defaults(handler=command_train)


def digit_scenes_demo(args: argparse.Namespace) -> list[Path]:
    """Train the demo's two models on the digit scenes: the base cell of the end-to-end grid
    (DIGIT_SCENES_GRID: its corpus, written once into its folder or --corpus-dir, and, unless --config names
    another, its base run config: SCAN t2i with the frozen EfficientNet-Lite0 tower), once plain and once
    with the grid's constrained variant, into `<root>/plain/model` and `<root>/constrained/model` (root:
    DIGIT_SCENES_DEMO_DIR, or `--set output_dir=DIR`). The other --set keys apply to both models."""
    from ..training.ablation import load_ablation, prepare_corpus
    from ..training.experiment import load_experiment_config, run_experiment
    from .ablate import resolve_ablation

    grid = load_ablation(resolve_ablation(DIGIT_SCENES_GRID))
    if args.corpus_dir is not None:
        grid.corpus = {**grid.corpus, "path": args.corpus_dir}
    base = grid.runs[0].base if args.config == DEMO_CONFIG else resolve_config(args.config)
    overrides = {**prepare_corpus(grid), **parse_overrides(args.set)}
    root = Path(overrides.pop("output_dir", DIGIT_SCENES_DEMO_DIR))
    model_dirs = []
    for name, variant in DIGIT_SCENES_DEMO_MODELS.items():
        weights = {f"model.{key}": value for key, value in demo_constraints(grid, variant).items()}
        config = load_experiment_config(base, {**overrides, **weights, "output_dir": str(root / name)})
        model_dirs.append(run_experiment(config, overwrite=args.overwrite))
    return model_dirs


def demo_constraints(grid, variant: str) -> dict[str, float]:
    """The CCR and CCS weights of one variant of the grid's first model (its first seed's cell)."""
    first = grid.runs[0]
    cells = [r for r in grid.runs if (r.model, r.variant, r.seed) == (first.model, variant, first.seed)]
    if not cells:
        raise InvalidValueError(
            f"{grid.source}: model {first.model!r} has no variant {variant!r} for the demo"
        )
    return {key: float(cells[0].overrides["model"].get(key, 0.0)) for key in ("ccr_weight", "ccs_weight")}


def print_demo_model(model_dir: Path, title: str) -> None:
    import json

    record = json.loads((model_dir / "eval_results_test.json").read_text())
    print_results(
        record["metrics"], f"{title} on the test split of the {record['dataset']} (chance level below)"
    )
    if "attention" in record["metrics"]:
        print(format_attention(record["metrics"]["attention"], "SCAN"))
    if "attention_drift" in record["metrics"]:
        print(format_drift(record["metrics"]["attention_drift"], "SCAN"))
    print(f"Load it with: AutoModel.from_pretrained({str(model_dir)!r})")


def command_demo(args: argparse.Namespace) -> None:
    if args.corpus == "digit-scenes":
        model_dirs = digit_scenes_demo(args)
        for model_dir, name in zip(model_dirs, DIGIT_SCENES_DEMO_MODELS, strict=True):
            weights = ", ".join(f"{k} {v:g}" for k, v in demo_constraints_of(model_dir).items())
            print_demo_model(model_dir, f"SCAN {name} ({weights})")
        plain, constrained = model_dirs
        default = [str(d) for d in model_dirs] == [
            f"{DIGIT_SCENES_DEMO_DIR}/{n}/model" for n in DIGIT_SCENES_DEMO_MODELS
        ]
        app = "python app.py" if default else f"python app.py --model {constrained} --model2 {plain}"
        print(f"\nSee them side by side: {app}")
        return
    args.resume = None
    print_demo_model(command_train(args), "SCAN")


def demo_constraints_of(model_dir: Path) -> dict[str, float]:
    """The CCR and CCS weights a trained model folder records (its training_config.yaml)."""
    model = (yaml.safe_load((model_dir / "training_config.yaml").read_text()) or {}).get("model", {})
    return {key: float(model.get(key, 0.0)) for key in ("ccr_weight", "ccs_weight")}


def add_demo_parser(commands) -> None:
    demo = commands.add_parser(
        "demo", help="build the built-in corpus, train SCAN, evaluate, save a checkpoint"
    )
    demo.add_argument(
        "--config",
        default=DEMO_CONFIG,
        help="run configuration: a YAML path or a published name (default: %(default)s)",
    )
    add_set_flag(demo)
    demo.add_argument(
        "--corpus",
        default="synthetic",
        choices=["synthetic", "digit-scenes"],
        help="the built-in synthetic corpus, or digit scenes: real handwritten-digit pixels, two models (plain "
        f"and CCR + CCS) trained end to end with a vision tower into {DIGIT_SCENES_DEMO_DIR}/{{plain,constrained}} "
        "(--set output_dir=DIR for another folder), which `python app.py` opens (docs/app.md)",
    )
    demo.add_argument(
        "--corpus-dir",
        default=None,
        help=f"where the digit scenes are written once (default: the folder configs/{DIGIT_SCENES_GRID}.yaml names)",
    )
    add_overwrite_flag(demo)
    demo.set_defaults(handler=command_demo)


def command_evaluate(args: argparse.Namespace) -> None:
    from ..evaluation.folder import evaluate_folders, write_evaluation
    from ..metrics.attention import AttendedSetSpec

    if args.push:
        from ..hub.push import check_model_repo

        check_model_repo(args.push, args.push_revision)  # fail before a long evaluation, not after it
    if args.index is not None and args.rerank_k is None:
        raise InvalidValueError(
            f"--index {args.index} is the first stage's index: it needs two-stage retrieval, give --rerank-k K too"
        )
    if args.rerank_k is not None and args.rerank_k < 1:
        raise InvalidValueError(f"--rerank-k must be a positive number of candidates, got {args.rerank_k}")
    result = evaluate_folders(
        args.models,
        dataset=args.dataset,
        split=args.split,
        protocol=args.protocol,
        captions_per_image=args.captions_per_image,
        rerank_k=args.rerank_k,
        index_dir=args.index,
        eccv_subset=args.eccv_subset,
        attention=(
            AttendedSetSpec(args.attended_rule, args.attended_value, args.iou_threshold)
            if args.attention
            else None
        ),
        entities=args.entities,
        progress=True,
    )
    for warning in result.warnings:
        print(f"warning: {warning}; these results record the current weights", file=sys.stderr)
    output = write_evaluation(result, args.output)
    metrics = result.metrics
    scoring = "" if args.rerank_k is None else f", two-stage (k = {args.rerank_k})"
    print_results(metrics, f"{' + '.join(args.models)} on {result.dataset_name}, split {args.split}{scoring}")
    if "first_stage" in metrics:
        print_first_stage(metrics)
    if "eccv" in metrics:
        from ..metrics.eccv import format_eccv_table

        print(format_eccv_table(metrics["eccv"]))
    for model_dir, attention in zip(args.models, metrics.get("attention", []), strict=False):
        print(format_attention(attention, model_dir))
    for model_dir, drift in zip(args.models, metrics.get("attention_drift", []), strict=False):
        if drift is not None:
            print(format_drift(drift, model_dir))
    print(f"\nWrote {output}")
    if args.push:
        from ..hub.push import push_results
        from .hub import print_push

        pushed = push_results([output], args.push, model_dir=args.models[0], revision=args.push_revision)
        print_push(pushed, f"the evaluation results {output.name}")


FIRST_STAGE_NAMES = {"global_head": "the global head", "mean_pooled": "mean-pooled fragment embeddings"}


def print_first_stage(metrics: dict) -> None:
    """The first stage of two-stage retrieval alone (its own recall), and its index when one was used."""
    first = metrics["first_stage"]
    names = " + ".join(FIRST_STAGE_NAMES.get(part, part) for part in first["source"].split("+"))
    print_results(first, f"First stage alone ({names}), which shortlisted k = {metrics['rerank_k']}")
    index = metrics.get("first_stage_index")
    for entry in index if isinstance(index, list) else [index] if index else []:
        recall = next(value for key, value in entry.items() if key.startswith("shortlist_recall@"))
        lists = f", {entry['n_lists']} lists, {entry['n_probe']} probed" if entry["kind"] == "ivf" else ""
        print(
            f"first-stage index: {entry['kind']}{lists} in {entry['folder']}; "
            f"shortlist recall against brute force {recall:.3f}"
        )


def add_evaluate_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="full-gallery retrieval evaluation of a model or an ensemble"
    )
    evaluate.add_argument("models", nargs="+", help="model folder(s); several are averaged as an ensemble")
    evaluate.add_argument(
        "--dataset",
        default=None,
        help="a DatasetDict folder saved with save_to_disk; default: the corpus recorded in the model's training_config.yaml",
    )
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument(
        "--protocol",
        default="full",
        choices=["full", "coco_5fold_1k", "eccv"],
        help="eccv: R@K plus ECCV Caption mAP@R, R-Precision, R@1 and CxC R@K (COCO 5K test, COCO ids)",
    )
    evaluate.add_argument(
        "--eccv-subset",
        action="store_true",
        help="with --protocol eccv: score a split holding only part of the COCO 5K test (recorded as a subset)",
    )
    evaluate.add_argument("--captions-per-image", type=int, default=5)
    evaluate.add_argument(
        "--rerank-k",
        type=int,
        default=None,
        metavar="K",
        help="two-stage retrieval: the model's global head (else its mean-pooled fragment embeddings) "
        "shortlists K candidates per query, the model re-ranks them; the first stage's own recall is reported too",
    )
    evaluate.add_argument(
        "--index",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --rerank-k: captions search their images through a faiss index saved in DIR beside the "
        "first-stage embeddings (flat, or IVF for large galleries), reused while the embeddings are unchanged",
    )
    evaluate.add_argument(
        "--attention", action="store_true", help="also report attention P/R/F1 (needs boxes, phrases)"
    )
    evaluate.add_argument("--attended-rule", default="inverse_n", choices=["inverse_n", "threshold", "top_k"])
    evaluate.add_argument(
        "--attended-value", type=float, default=0.0, help="threshold or k of the attended-set rule"
    )
    evaluate.add_argument("--iou-threshold", type=float, default=0.5)
    evaluate.add_argument(
        "--entities",
        type=Path,
        default=None,
        help="Flickr30k Entities folder (Sentences/, Annotations/) to ground with",
    )
    evaluate.add_argument(
        "--output", type=Path, default=None, help="JSON path (default: beside the first model)"
    )
    evaluate.add_argument(
        "--push",
        default=None,
        metavar="ORG/NAME",
        help="then add the result JSON to this existing model repo and re-render its card (one commit)",
    )
    evaluate.add_argument(
        "--push-revision", default=None, metavar="BRANCH", help="branch of --push (default main)"
    )
    evaluate.set_defaults(handler=command_evaluate)


def command_configs(args: argparse.Namespace) -> None:
    for name, path in published_configs().items():
        print(f"{name:<24} {config_summary(path)}")


def add_configs_parser(commands) -> None:
    configs = commands.add_parser("configs", help="list the published run configurations, one line each")
    configs.set_defaults(handler=command_configs)


def config_summary(path: Path) -> str:
    """One line: the model (backbone and its distinguishing options, constraints) and the data it reads."""
    raw = yaml.safe_load(path.read_text()) or {}
    model, data = raw.get("model", {}), raw.get("data", {})
    members = model.get("members") or [model]
    described = " + ".join(describe_model(member) for member in members)
    constraints = [
        f"{name.upper()} {model[f'{name}_weight']:g}"
        for name in ("ccr", "ccs")
        if model.get(f"{name}_weight")
    ]
    source = data.get("source", "synthetic")
    source = "built-in synthetic corpus" if source == "synthetic" else f"corpus at {source}"
    return f"{described}{' with ' + ', '.join(constraints) if constraints else ''}; {source}"


def describe_model(model: dict) -> str:
    options = [
        str(model[key]) if isinstance(model[key], str) else f"{key}={model[key]}"
        for key in SUMMARY_OPTIONS
        if key in model
    ]
    head = model.get("global_head")
    if isinstance(head, dict):
        options.append(f"+ global head ({head.get('pooling', 'mean')})")
    return " ".join([str(model.get("backbone", "?")).upper(), *options])


def command_ensemble(args: argparse.Namespace) -> None:
    from ..training.ensembles import assemble_ensemble

    output = assemble_ensemble(args.models, args.output)
    print(
        f"Saved an ensemble of {len(args.models)} models to {output}; evaluate it with: ccr evaluate {output}"
    )


def add_ensemble_parser(commands) -> None:
    ensemble = commands.add_parser(
        "ensemble", help="combine trained models into one checkpoint that averages their similarity matrices"
    )
    ensemble.add_argument("models", nargs="+", type=Path, help="model folders sharing one tokenizer")
    ensemble.add_argument("--output", type=Path, required=True, help="folder for the ensemble checkpoint")
    ensemble.set_defaults(handler=command_ensemble)


def command_visualize(args: argparse.Namespace) -> None:
    from ..data.corpora import load_evaluation_split
    from ..evaluation.pictures import visualize

    split, _ = load_evaluation_split(args.models[0], args.dataset, args.split)
    out = visualize(args.models, split, args.image_id, args.caption, args.word, args.out, args.image)
    print(f"Wrote {out}")


def add_visualize_parser(commands) -> None:
    visual = commands.add_parser("visualize", help="draw a word's attention over the region boxes (PNG)")
    visual.add_argument(
        "models", nargs="+", help="one model folder, or two (e.g. base and constrained) side by side"
    )
    visual.add_argument("--image-id", required=True)
    visual.add_argument(
        "--caption", default="0", help="index of one of the image's captions, or any caption text"
    )
    visual.add_argument("--word", required=True, help="a word of the caption, or its index")
    visual.add_argument("--out", type=Path, default=Path("attention.png"))
    visual.add_argument(
        "--image", type=Path, default=None, help="draw on this image file instead of the box layout"
    )
    visual.add_argument(
        "--dataset", default=None, help="default: the corpus recorded in the first model's folder"
    )
    visual.add_argument("--split", default="test")
    visual.set_defaults(handler=command_visualize)


def add_set_flag(parser: argparse.ArgumentParser, help: str = "override a config key") -> None:
    """`--set KEY=VALUE` (repeatable): the one override flag of every command that reads a run config."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints and model already in output_dir and start from step 0",
    )


def add_commands(commands) -> None:
    add_demo_parser(commands)
    add_train_parser(commands)
    add_configs_parser(commands)
    add_evaluate_parser(commands)
    add_visualize_parser(commands)
    add_ensemble_parser(commands)
