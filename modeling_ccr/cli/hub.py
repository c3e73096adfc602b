"""`ccr push`, `ccr push-dataset`, `ccr card`: model folders and corpora on the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts.loading import check_model_folder


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
    from ..hub.push import push_model

    result = push_model(
        check_model_folder(args.model_dir),
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        license=args.license,
    )
    print_push(result, str(args.model_dir))


def command_push_dataset(args: argparse.Namespace) -> None:
    from ..hub.push import push_dataset

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
    from ..hub.push import model_card_for_folder

    print(model_card_for_folder(check_model_folder(args.model_dir), args.repo_id, args.license), end="")


def add_push_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--private", action="store_true", help="create the repo private (if it is new)")
    command.add_argument(
        "--revision", default=None, metavar="BRANCH", help="branch to push to, created if new (default main)"
    )
    command.add_argument("--commit-message", default=None)


def add_commands(commands) -> None:
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
