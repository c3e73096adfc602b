"""`ccr ablate`: a grid of runs (backbones x constraint variants x seeds) from one YAML, with its tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..resources import published_ablations
from .run import add_set_flag, parse_overrides


def resolve_ablation(name_or_path: str) -> Path:
    """An ablation file given as a path, or as the name of a shipped one (`ablation_f30k`)."""
    shipped = published_ablations()
    if not Path(name_or_path).is_file() and name_or_path in shipped:
        return shipped[name_or_path]
    return Path(name_or_path)


def command_ablate(args: argparse.Namespace) -> None:
    from ..training.ablation import load_ablation, push_runs, run_ablation, write_tables

    ablation = load_ablation(resolve_ablation(args.config), parse_overrides(args.set))
    if args.push:
        from ..hub.push import validate_repo_id

        validate_repo_id(f"{args.push}-x")  # a malformed ORG/PREFIX fails before hours of training
    if args.tables_only:
        markdown, _ = write_tables(ablation)
    else:
        run_ablation(ablation, jobs=args.jobs, threads=args.threads)
        markdown = ablation.output_dir / "ablation.md"
    print(f"\n{markdown.read_text()}\nWrote {markdown} and {markdown.with_suffix('.json')}")
    if args.push:
        push_runs(ablation, args.push)


def add_commands(commands) -> None:
    ablate = commands.add_parser(
        "ablate",
        help="train a grid of backbones x constraint variants x seeds from one YAML; tables as markdown and JSON",
    )
    ablate.add_argument(
        "config", help="an ablation YAML (docs/ablation.md), or a shipped one by name (ablation_f30k, ...)"
    )
    ablate.add_argument("--jobs", type=int, default=1, help="runs trained side by side (default 1)")
    ablate.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (default: the cores divided by --jobs); 1 lets another grid share the machine",
    )
    add_set_flag(ablate, help="override a run-config key in every run (e.g. training.num_train_epochs=2)")
    ablate.add_argument(
        "--tables-only", action="store_true", help="only rewrite the tables from the finished runs"
    )
    ablate.add_argument(
        "--push",
        default=None,
        metavar="ORG/PREFIX",
        help="then push every finished run with its card to ORG/PREFIX-<model>-<variant>-seed<k>",
    )
    ablate.set_defaults(handler=command_ablate)
