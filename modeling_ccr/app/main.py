"""Command line and environment of the app: which models, which corpus, where to listen."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import UserError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="app.py", description="Web app: rank captions for a photo, search a corpus, see the attention."
    )
    parser.add_argument("--model", default=env("CCR_MODEL"), help="model folder or Hub id (env CCR_MODEL)")
    parser.add_argument("--model2", default=env("CCR_MODEL2"), help="a second model shown side by side")
    parser.add_argument(
        "--corpus", default=env("CCR_CORPUS"),
        help="DatasetDict folder to search and pick images from (default: the first model's training corpus)",
    )  # fmt: skip
    parser.add_argument("--split", default=env("CCR_SPLIT", "test"))
    parser.add_argument(
        "--images", default=env("CCR_IMAGES"), help="folder of the corpus's photos (by image_id)"
    )
    parser.add_argument(
        "--backbone", default=None, help="photo extractor: timm backbone (default: the corpus's)"
    )
    parser.add_argument("--weights", default=None, help="photo extractor weights (default: the corpus's)")
    parser.add_argument(
        "--grid", type=int, default=None, help="photo regions per side (default: the corpus's)"
    )
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("give --model (a model folder or a Hub id) or set CCR_MODEL")
    return args


def build_app(args: argparse.Namespace):
    """The `MatchingApp` (models, gallery, photo reader) described by the parsed arguments."""
    from pathlib import Path

    from ..experiment import load_evaluation_split
    from .core import AppError, Gallery, PhotoReader, corpus_of, load_app_matcher
    from .ui import MatchingApp

    matchers = [load_app_matcher(m) for m in (args.model, args.model2) if m]
    gallery = None
    if args.corpus or (matchers[0].folder / "training_config.yaml").is_file():
        # --corpus, else the model's training corpus (the built-in one is rebuilt from its recorded seed).
        split, name = load_evaluation_split(matchers[0].folder, args.corpus, args.split)
        gallery = Gallery(split, f"{name} ({args.split})", Path(args.images) if args.images else None)
    corpus = Path(args.corpus) if args.corpus else corpus_of(matchers[0])
    photos = None
    overrides = {"backbone": args.backbone, "weights": args.weights, "grid": args.grid}
    if corpus is not None and (corpus / "extraction.json").is_file():
        photos = PhotoReader.for_corpus(corpus, **overrides)
    elif args.backbone:
        photos = PhotoReader({k: v for k, v in overrides.items() if v is not None})
    if photos is not None and photos.feature_dim != matchers[0].feature_dim:
        raise AppError(
            f"the photo extractor gives {photos.feature_dim}-d features; {matchers[0].name} takes "
            f"{matchers[0].feature_dim}-d: photos need the extractor the model was trained with"
        )
    return MatchingApp(matchers, gallery, photos)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        app = build_app(args)
    except UserError as err:
        print(f"app.py: error: {err}", file=sys.stderr)
        return 2
    from .ui import build_demo

    build_demo(app).launch(server_name=args.host, server_port=args.port)
    return 0
