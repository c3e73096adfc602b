"""The `ccr` command: `ccr demo`, `ccr train CONFIG`, `ccr evaluate MODEL [MODEL ...]`, `ccr visualize MODEL ...`,
`ccr ensemble MODEL_DIR MODEL_DIR ... --output DIR`, `ccr push MODEL_DIR ORG/NAME`,
`ccr push-dataset DATASET_DIR ORG/NAME`, `ccr card MODEL_DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = REPO_CONFIGS / "demo.yaml"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["training.max_steps=100", ...]` -> `{"training.max_steps": 100}` (values parsed as YAML)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE (e.g. training.max_steps=100), got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def print_results(metrics: dict, title: str) -> None:
    from .metrics.retrieval import chance_metrics, format_results_table

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


def command_train(args: argparse.Namespace) -> Path:
    from .experiment import load_experiment_config, run_experiment

    config = load_experiment_config(args.config, parse_overrides(args.set))
    model_dir = run_experiment(config, resume_from_checkpoint=args.resume or None)
    print(f"\nSaved the best checkpoint to {model_dir}")
    return model_dir


def command_demo(args: argparse.Namespace) -> None:
    import json

    if not args.config.is_file():
        raise SystemExit(f"demo config not found: {args.config} (pass --config PATH)")
    args.resume = None
    model_dir = command_train(args)
    record = json.loads((model_dir / "eval_results_test.json").read_text())
    print_results(
        record["metrics"], f"SCAN on the test split of the {record['dataset']} (chance level below)"
    )
    if "attention" in record["metrics"]:
        print(format_attention(record["metrics"]["attention"], "SCAN"))
    print(f"\nLoad it with: AutoModel.from_pretrained({str(model_dir)!r})")


def command_evaluate(args: argparse.Namespace) -> None:
    from transformers import AutoModel, AutoTokenizer

    from .data.flickr30k_entities import attach_entities
    from .evaluation import attention_metrics, evaluate_matchers
    from .experiment import evaluate_and_record, load_evaluation_split
    from .metrics.attention import AttendedSetRule

    if args.push:
        from .hub import check_model_repo

        check_model_repo(args.push, args.push_revision)  # fail before a long evaluation, not after it
    models = [AutoModel.from_pretrained(path) for path in args.models]
    tokenizers = [AutoTokenizer.from_pretrained(path) for path in args.models]
    dataset, dataset_name = load_evaluation_split(args.models[0], args.dataset, args.split)
    if args.entities is not None:
        dataset = attach_entities(dataset, args.entities)
    metrics = evaluate_matchers(
        models, tokenizers, dataset, args.protocol, args.captions_per_image, progress=True
    )
    if args.attention:
        rule = AttendedSetRule(args.attended_rule, args.attended_value, args.iou_threshold)
        metrics["attention"] = [
            attention_metrics(m, t, dataset, rule, progress=True)
            for m, t in zip(models, tokenizers, strict=True)
        ]
    output = evaluate_and_record(metrics, dataset_name, args.split, args.models, args.output)
    print_results(metrics, f"{' + '.join(args.models)} on {dataset_name}, split {args.split}")
    for model_dir, attention in zip(args.models, metrics.get("attention", []), strict=False):
        print(format_attention(attention, model_dir))
    print(f"\nWrote {output}")
    if args.push:
        from .hub import push_results

        result = push_results([output], args.push, model_dir=args.models[0], revision=args.push_revision)
        print_push(result, f"the evaluation results {output.name}")


def print_push(result, what: str) -> None:
    if not result.changed:
        print(
            f"Nothing to push: {result.repo_id} ({result.branch}) already holds {what} at {result.commit_id}"
        )
        return
    print(f"Pushed {what} to {result.repo_id} ({result.branch}) in one commit: {result.commit_id}")
    print(f"  {result.commit_url}")
    print(f"  uploaded: {', '.join(result.uploaded)}")
    if result.deleted:
        print(f"  deleted (no longer in the folder): {', '.join(result.deleted)}")
    if result.skipped:
        print(f"  not uploaded: {', '.join(result.skipped)}")


def command_push(args: argparse.Namespace) -> None:
    from .hub import push_model

    result = push_model(
        args.model_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        license=args.license,
    )
    print_push(result, str(args.model_dir))


def command_push_dataset(args: argparse.Namespace) -> None:
    from .hub import push_dataset

    result = push_dataset(
        args.dataset_dir,
        args.repo_id,
        license=args.license,
        source=args.source,
        pretty_name=args.pretty_name,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print_push(result, str(args.dataset_dir))


def command_card(args: argparse.Namespace) -> None:
    from .hub import model_card_for_folder

    print(model_card_for_folder(args.model_dir, args.repo_id, args.license), end="")


def command_ensemble(args: argparse.Namespace) -> None:
    from .experiment import assemble_ensemble

    output = assemble_ensemble(args.models, args.output)
    print(
        f"Saved an ensemble of {len(args.models)} models to {output}; evaluate it with: ccr evaluate {output}"
    )


def command_visualize(args: argparse.Namespace) -> None:
    from .experiment import load_evaluation_split
    from .visualization import visualize

    split, _ = load_evaluation_split(args.models[0], args.dataset, args.split)
    out = visualize(args.models, split, args.image_id, args.caption, args.word, args.out, args.image)
    print(f"Wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="build the built-in corpus, train SCAN, evaluate, save a checkpoint"
    )
    demo.add_argument(
        "--config", type=Path, default=DEMO_CONFIG, help="run configuration (default: %(default)s)"
    )
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    demo.set_defaults(handler=command_demo)

    train = commands.add_parser("train", help="train from a YAML run configuration")
    train.add_argument("config", type=Path)
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    train.add_argument(
        "--resume", nargs="?", const=True, default=None, help="resume from the last (or a given) checkpoint"
    )
    train.set_defaults(handler=command_train)

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
    evaluate.add_argument("--protocol", default="full", choices=["full", "coco_5fold_1k"])
    evaluate.add_argument("--captions-per-image", type=int, default=5)
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
    ensemble = commands.add_parser(
        "ensemble", help="combine trained models into one checkpoint that averages their similarity matrices"
    )
    ensemble.add_argument("models", nargs="+", type=Path, help="model folders sharing one tokenizer")
    ensemble.add_argument("--output", type=Path, required=True, help="folder for the ensemble checkpoint")
    ensemble.set_defaults(handler=command_ensemble)
    add_hub_commands(commands)
    return parser


def add_push_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--private", action="store_true", help="create the repo private (if it is new)")
    command.add_argument(
        "--revision", default=None, metavar="BRANCH", help="branch to push to, created if new (default main)"
    )
    command.add_argument("--commit-message", default=None)


def add_hub_commands(commands) -> None:
    push = commands.add_parser(
        "push", help="upload an evaluated model folder with a rendered model card (one commit)"
    )
    push.add_argument("model_dir", type=Path, help="a model folder written by ccr train (runs/NAME/model)")
    push.add_argument("repo_id", metavar="ORG/NAME")
    push.add_argument(
        "--license",
        default=None,
        help="license id for the card metadata, e.g. apache-2.0 (default: keep the repo's)",
    )
    add_push_options(push)
    push.set_defaults(handler=command_push)

    push_data = commands.add_parser(
        "push-dataset", help="upload a save_to_disk corpus as Parquet with a dataset card (one commit)"
    )
    push_data.add_argument("dataset_dir", type=Path, help="a DatasetDict folder saved with save_to_disk")
    push_data.add_argument("repo_id", metavar="ORG/NAME")
    push_data.add_argument(
        "--license",
        default=None,
        help="license id for the card metadata (default: keep the repo's; 'unknown' for a new repo)",
    )
    push_data.add_argument(
        "--source", default=None, help="where the data comes from, shown in the card (e.g. how it was built)"
    )
    push_data.add_argument("--pretty-name", default=None, help="title of the dataset card")
    add_push_options(push_data)
    push_data.set_defaults(handler=command_push_dataset)

    card = commands.add_parser("card", help="print the model card `ccr push` would upload for a model folder")
    card.add_argument("model_dir", type=Path)
    card.add_argument(
        "--repo-id", default="ORG/NAME", metavar="ORG/NAME", help="repo id the card's examples name"
    )
    card.add_argument("--license", default=None)
    card.set_defaults(handler=command_card)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .cards import CardError
    from .experiment import ConfigError
    from .hub import PushError

    try:
        args.handler(args)
    except ConfigError as err:
        print(f"ccr: configuration error: {err}", file=sys.stderr)
        return 2
    except (PushError, CardError) as err:
        print(f"ccr: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
