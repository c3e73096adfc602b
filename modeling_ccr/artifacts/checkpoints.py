"""Checkpoints a run can trust: marked complete last, found newest-complete-first, rotated safely.

The Trainer writes `checkpoint-N/` file by file (weights, optimizer, scheduler, RNG state, trainer state);
a process killed in between leaves a folder that looks like a checkpoint but cannot be resumed from.
`mark_complete` writes `checkpoint_complete.json` after everything else (atomically: a temporary name,
fsync, rename), recording each file's size, so a checkpoint without it, or with a file of another size
since, is incomplete. `--resume` takes the newest complete one (`newest_complete`) and reports the others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "checkpoint_complete.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# Without these a Trainer cannot resume (optimizer/scheduler/RNG files are absent with save_only_model).
REQUIRED_FILES = ("config.json", "model.safetensors", "trainer_state.json")


@dataclass(frozen=True)
class Checkpoint:
    """A `checkpoint-N` folder: its step, and why it cannot be resumed from (None when complete)."""

    path: Path
    step: int
    problem: str | None

    @property
    def complete(self) -> bool:
        return self.problem is None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees either the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def mark_complete(folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Record every file of a fully written checkpoint, then write the marker (last, atomically).

    extra: JSON values kept with the marker (the run's cumulative training time and sessions).
    """
    folder = Path(folder)
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != COMPLETE_MARKER:
            _fsync_file(path)  # the marker must never reach the disk before the files it vouches for
            files[path.name] = path.stat().st_size
    write_atomically(folder / COMPLETE_MARKER, json.dumps({"files": files, **(extra or {})}, indent=2) + "\n")


def read_marker(folder: str | Path) -> dict[str, Any]:
    """The marker of a complete checkpoint ({} when it has none or it is unreadable)."""
    try:
        marker = json.loads((Path(folder) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, in a few words; None when it is complete."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not (folder / COMPLETE_MARKER).is_file():
        detail = f"; it has no {', '.join(missing)}" if missing else ""
        return f"no {COMPLETE_MARKER}: its write was interrupted{detail}"
    marker = read_marker(folder)
    recorded = marker.get("files")
    if not isinstance(recorded, dict):
        return f"{COMPLETE_MARKER} is unreadable"
    if missing:
        return f"{', '.join(missing)} missing"
    for name, size in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, {size} when the checkpoint was written"
    return None


def list_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """Every `checkpoint-N` folder of a run, oldest step first, each with its completeness."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir():
            found.append(Checkpoint(path, int(match.group(1)), checkpoint_problem(path)))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def newest_complete(run_dir: str | Path) -> tuple[Checkpoint | None, list[Checkpoint]]:
    """The newest complete checkpoint (None if there is none), and the incomplete ones newer than it."""
    checkpoints = list_checkpoints(run_dir)
    complete = [c for c in checkpoints if c.complete]
    newest = complete[-1] if complete else None
    skipped = [c for c in checkpoints if not c.complete and (newest is None or c.step > newest.step)]
    return newest, skipped


def rotate_checkpoints(run_dir: str | Path, keep: int | None, protected: set[Path]) -> list[Checkpoint]:
    """Delete incomplete checkpoints and the oldest complete ones beyond `keep`; returns those deleted.

    Called right after a checkpoint was marked complete, so an incomplete one is always a leftover of an
    interrupted write. The newest complete checkpoint and `protected` (the best one) are always kept, as
    by the Trainer's own `save_total_limit`; keep=None or 0 keeps every complete checkpoint.
    """
    protected = {Path(p).resolve() for p in protected}
    checkpoints = list_checkpoints(run_dir)
    doomed = [c for c in checkpoints if not c.complete and c.path.resolve() not in protected]
    complete = [c for c in checkpoints if c.complete]
    if keep is not None and keep > 0 and complete:
        kept = {c.path.resolve() for c in complete if c.path.resolve() in protected} | {
            complete[-1].path.resolve()
        }
        for checkpoint in reversed(complete):
            if len(kept) >= keep:
                break
            kept.add(checkpoint.path.resolve())
        doomed += [c for c in complete if c.path.resolve() not in kept]
    for checkpoint in doomed:
        shutil.rmtree(checkpoint.path, ignore_errors=True)
    return doomed
