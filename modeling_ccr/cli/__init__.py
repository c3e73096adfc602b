"""The `ccr` command. Each module of this package adds one group of subcommands:

- `run`: demo, train, configs, evaluate, visualize, ensemble
- `hub`: push, push-dataset, card
- `extract`: extract (a corpus of region features from a folder of your own images)
- `convert`: scan-precomp, butd-tsv (real corpora from SCAN precomp folders and bottom-up-attention TSVs)
- `checkpoint`: convert-checkpoint (models trained with the original SCAN, BFAN, SGRAF, VSE-infinity, CHAN
  and LAPS code)
- `ablate`: ablate (a grid of backbones x constraint variants x seeds from one YAML, with its tables)

A user error (`modeling_ccr.errors.UserError`: a missing path, a malformed file, a bad value) is printed
as one line and exits with code 2; `--debug` shows its traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from . import ablate, checkpoint, convert, extract, hub, run

COMMAND_GROUPS = (run, hub, extract, convert, checkpoint, ablate)
USER_ERROR_EXIT_CODE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccr", description="Cross-attention image-text matching.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


# 128 + SIGINT, what a shell reports for a process stopped by Ctrl-C.
INTERRUPTED_EXIT_CODE = 130
INTERRUPTED_HINTS = {
    "train": "complete checkpoints are kept; run the same command with --resume to continue",
    "demo": "run `ccr demo` again to start over",
    "ablate": "finished runs are kept; run the same command again to resume the grid",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"ccr {args.command}: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            f"ccr {args.command}: interrupted; {INTERRUPTED_HINTS.get(args.command, 'nothing was lost')}",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
