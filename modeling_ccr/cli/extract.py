"""`ccr extract`: region features of a folder of images, with their captions, as a corpus to train on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def command_extract(args: argparse.Namespace) -> None:
    from ..vision.corpus import extract_corpus, read_boxes, read_captions
    from ..vision.extractor import RegionFeatureExtractor
    from ..vision.weights import weights_source

    captioned = read_captions(args.captions)  # a malformed captions file fails before the backbone loads
    boxes = read_boxes(args.boxes) if args.boxes else None
    extractor = RegionFeatureExtractor(
        args.backbone, args.weights, grid=args.grid, image_size=args.image_size, batch_size=args.batch_size
    )
    corpus, report = extract_corpus(args.images_dir, captioned, extractor, boxes, skip_bad=args.skip_bad)
    corpus.save_to_disk(str(args.out))
    provenance = {
        "backbone": args.backbone,
        **weights_source(args.backbone, args.weights),  # the file loaded (packaged by default) and its sha256
        "regions": "given boxes" if boxes else f"{args.grid}x{args.grid} grid",
        "image_size": list(extractor.processor.image_size),
        "feature_dim": extractor.feature_dim,
        "images_per_split": report.images_per_split,
        "skipped": report.skipped,
    }
    (Path(args.out) / "extraction.json").write_text(json.dumps(provenance, indent=2) + "\n")
    splits = ", ".join(f"{split} {n}" for split, n in report.images_per_split.items())
    print(
        f"Wrote {args.out}: {splits} images, {extractor.feature_dim}-d region features ({provenance['regions']})"
    )
    for line in report.skipped:
        print(f"skipped: {line}")
    if report.uncaptioned:
        print(f"{len(report.uncaptioned)} image(s) in {args.images_dir} have no captions and were not extracted, "
              f"e.g. {report.uncaptioned[0]}")  # fmt: skip


def add_commands(commands) -> None:
    extract = commands.add_parser(
        "extract", help="region features with pixel boxes of your own images (timm backbone) -> corpus"
    )
    extract.add_argument("images_dir", type=Path, help="folder of images, named as in the captions file")
    extract.add_argument(
        "--captions", type=Path, required=True, help="Karpathy JSON, CSV (image,caption[,split]) or JSONL"
    )
    extract.add_argument("--out", type=Path, required=True, help="folder for the DatasetDict (save_to_disk)")
    extract.add_argument("--backbone", default="efficientnet_lite0", help="a timm model name")
    extract.add_argument(
        "--weights", type=Path, default=None,
        help="local state dict (timm or EfficientNet-PyTorch naming); default: timm's pretrained weights",
    )  # fmt: skip
    extract.add_argument("--grid", type=int, default=6, help="grid cells per side (default 6: 36 regions)")
    extract.add_argument("--boxes", type=Path, default=None, help="JSON {image: [[x1, y1, x2, y2], ...]}")
    extract.add_argument(
        "--image-size", type=int, default=None, help="network input size (default: backbone's)"
    )
    extract.add_argument("--batch-size", type=int, default=16)
    extract.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report them")
    extract.set_defaults(handler=command_extract)
