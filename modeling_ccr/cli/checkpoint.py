"""`ccr convert-checkpoint`: a checkpoint of the original SCAN, BFAN, SGRAF, VSE-infinity, CHAN or LAPS code -> a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def command_convert_checkpoint(args: argparse.Namespace) -> None:
    from ..artifacts.original_checkpoints import convert_checkpoint, write_conversion

    conversion = convert_checkpoint(
        args.checkpoint, args.vocab, args.arch, args.text_encoder, args.vision_architecture
    )
    how = "given" if args.arch else "guessed"
    print(f"architecture: {conversion.architecture} ({how}: {conversion.architecture_reason})")
    print(f"model: {type(conversion.model).__name__} (model_type {conversion.model.config.model_type})")
    for note in conversion.provenance["notes"]:
        print(f"note: {note}")
    output_dir = write_conversion(conversion, args.out)
    print(f"wrote {output_dir} (model.safetensors, config.json, tokenizer, conversion.json)")
    print(f"next: ccr evaluate {output_dir} --dataset CORPUS")


def add_commands(commands) -> None:
    from ..artifacts.original_checkpoints import ARCHITECTURES

    convert = commands.add_parser(
        "convert-checkpoint",
        help="convert a model_best.pth(.tar) of the original SCAN, BFAN, SGRAF, VSE-infinity, CHAN or LAPS code into a model folder",
    )
    convert.add_argument("checkpoint", type=Path, metavar="PATH", help="the original checkpoint file")
    convert.add_argument(
        "--vocab",
        type=Path,
        default=None,
        metavar="VOCAB.json",
        help="the vocab/*_vocab.json it was trained with (a word-GRU text encoder)",
    )
    convert.add_argument(
        "--text-encoder",
        type=Path,
        default=None,
        metavar="DIR",
        help="for a BERT text encoder (VSE-infinity, CHAN, LAPS): the transformers folder (config, tokenizer) "
        "of the BERT it was trained from",
    )
    convert.add_argument(
        "--vision-architecture",
        default=None,
        metavar="TIMM_NAME",
        help="LAPS only: the timm name of its vision transformer when its code was changed to load another "
        "ViT or Swin (default: the one opt.vit_type selects: vit_base_patch16_224 or swin_base_patch4_window7_224)",
    )
    convert.add_argument("--out", type=Path, required=True, metavar="DIR", help="new model folder")
    convert.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default=None,
        help="which code saved it (default: guessed from the file)",
    )
    convert.set_defaults(handler=command_convert_checkpoint)
