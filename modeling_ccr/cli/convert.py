"""`ccr convert scan-precomp`, `ccr convert butd-tsv` and `ccr convert images`: real corpora from the files
researchers have, or from a folder of photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidValueError


def _print(report) -> None:
    print(report.summary())
    print(f"Train on it with: ccr train CONFIG --set data.source={report.output}")


def command_scan_precomp(args: argparse.Namespace) -> None:
    from ..data.formats.convert import convert_precomp

    report = convert_precomp(
        args.directory,
        args.output,
        splits=args.split,
        ids_path=args.ids,
        karpathy_path=args.karpathy,
        tsv_paths=args.boxes,
        options=_options(args),
    )
    _print(report)


def command_butd_tsv(args: argparse.Namespace) -> None:
    from ..data.formats.convert import convert_butd_tsv

    if len(args.paths) < 2:
        raise InvalidValueError("ccr convert butd-tsv needs at least one TSV file and then the output folder")
    report = convert_butd_tsv(
        args.paths[:-1],
        args.karpathy,
        args.paths[-1],
        options=_options(args),
    )
    _print(report)


def command_images(args: argparse.Namespace) -> None:
    from ..vision.corpus import read_boxes, read_captions
    from ..vision.image_corpus import build_image_corpus

    captioned = read_captions(args.captions)
    boxes = read_boxes(args.boxes) if args.boxes else None
    corpus, report = build_image_corpus(args.images_dir, captioned, boxes, skip_bad=args.skip_bad)
    corpus.save_to_disk(str(args.out))
    splits = ", ".join(f"{split} {n}" for split, n in report.images_per_split.items())
    regions = "with region boxes" if boxes else "regions from the vision tower's grid"
    print(f"Wrote {args.out}: {splits} images ({regions}), for a model with a vision_tower")
    for line in report.skipped:
        print(f"skipped: {line}")
    print(f"Train on it with: ccr train CONFIG --set data.source={args.out}")


def _add_images_command(formats) -> None:
    images = formats.add_parser(
        "images", help="a folder of images with a captions file -> an image corpus (for a vision tower)"
    )
    images.add_argument("images_dir", type=Path, help="folder of images, named as in the captions file")
    images.add_argument(
        "--captions", type=Path, required=True, help="Karpathy JSON, CSV (image,caption[,split]) or JSONL"
    )
    images.add_argument("--out", type=Path, required=True, help="folder for the DatasetDict (save_to_disk)")
    images.add_argument(
        "--boxes", type=Path, default=None, help="JSON {image: [[x1, y1, x2, y2], ...]}: region boxes"
    )
    images.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable images out and list them, instead of stopping",
    )
    images.set_defaults(handler=command_images)


def _options(args: argparse.Namespace):
    from ..data.formats.convert import ConversionOptions

    # Checked here so the message names the flag; 0 would keep no caption, -1 would drop the last one.
    if args.captions_per_image < 1:
        raise InvalidValueError(
            f"--captions-per-image must be a positive integer (captions kept per image), found "
            f"{args.captions_per_image}"
        )
    return ConversionOptions(
        entities_dir=args.entities,
        float16=args.float16,
        skip_bad=args.skip_bad,
        captions_per_image=args.captions_per_image,
    )


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--entities", type=Path, default=None, help="Flickr30k Entities folder (Sentences/, Annotations/)"
    )
    parser.add_argument("--float16", action="store_true", help="store features as float16 (half the disk)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="leave bad images out and list them, instead of stopping"
    )
    parser.add_argument(
        "--captions-per-image",
        type=int,
        default=5,
        help="captions kept per image, a positive integer (default 5)",
    )


def add_commands(commands) -> None:
    convert = commands.add_parser(
        "convert", help="convert precomp folders, bottom-up-attention TSVs or image folders"
    )
    formats = convert.add_subparsers(dest="format", required=True)

    precomp = formats.add_parser(
        "scan-precomp", help="a SCAN precomp folder ({split}_ims.npy, {split}_caps.txt[, {split}_ids.txt])"
    )
    precomp.add_argument("directory", type=Path, help="e.g. data/f30k_precomp")
    precomp.add_argument("output", type=Path, help="a new folder for the DatasetDict")
    precomp.add_argument(
        "--split",
        action="append",
        default=None,
        metavar="NAME[=CORPUS_SPLIT]",
        help="precomp split to convert, optionally renamed (default: all; dev -> validation), "
        "e.g. --split train --split dev=validation --split testall=test",
    )
    precomp.add_argument("--ids", type=Path, default=None, help="image ids of the one --split, one per line")
    precomp.add_argument(
        "--karpathy", type=Path, default=None, help="dataset_flickr30k.json / dataset_coco.json"
    )
    precomp.add_argument(
        "--boxes",
        type=Path,
        nargs="+",
        default=(),
        metavar="TSV",
        help="bottom-up-attention TSVs with the boxes",
    )
    _common_options(precomp)
    precomp.set_defaults(handler=command_scan_precomp)

    tsv = formats.add_parser(
        "butd-tsv",
        help="bottom-up-attention TSVs with a Karpathy split file",
        description="Options may come first or last, not between the files: argparse ends a run of "
        "positional arguments at the first option.",
    )
    tsv.add_argument(
        "paths",
        type=Path,
        nargs="+",
        metavar="TSV... OUT",
        help="one or more TSV files, then a new output folder",
    )
    tsv.add_argument(
        "--karpathy", type=Path, required=True, help="dataset_flickr30k.json / dataset_coco.json"
    )
    _common_options(tsv)
    tsv.set_defaults(handler=command_butd_tsv)

    _add_images_command(formats)
