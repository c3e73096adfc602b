"""`python -m modeling_ccr.cli` is the `ccr` command; every command that reads a run config has one `--set`."""

import subprocess
import sys

import pytest

from modeling_ccr.cli import build_parser


def test_python_dash_m_runs_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "modeling_ccr.cli", "configs"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("scan_t2i_avg_f30k ") for line in done.stdout.splitlines())


@pytest.mark.parametrize("command", ["demo", "train", "ablate"])
def test_set_is_repeatable_and_collected_in_order(command):
    extra = [] if command == "demo" else ["config.yaml"]
    args = build_parser().parse_args([command, *extra, "--set", "a=1", "--set", "b.c=2"])
    assert args.set == ["a=1", "b.c=2"]
