"""The output folder of a run: that it can hold a run, one training at a time in it, and where it resumes.

- `check_output_dir`: a folder (or one that can be made) that is writable; one line otherwise;
- `run_lock`: `output_dir/run.lock` for the run's length, so a second training into it fails at once;
- `resume_checkpoint`: what `--resume` / `--overwrite` mean for the checkpoints and model already there;
- `checkpoint_mismatch`: a checkpoint of another run (another model config or vocabulary) is refused
  before the Trainer would fail on it with a traceback.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import PreTrainedConfig, PreTrainedTokenizerBase

from ..artifacts.checkpoints import checkpoint_problem, list_checkpoints, newest_complete
from ..errors import ConfigError, UserError, first_line


class RunFolderError(UserError):
    """An output folder that cannot hold the run: a file, read-only, in use, or holding another run."""


LOCK_FILE = "run.lock"


def check_output_dir(output_dir: Path, where: str) -> None:
    """The output folder is a writable folder, or can be made in a writable one; one line naming it otherwise."""
    if output_dir.exists() and not output_dir.is_dir():
        raise RunFolderError(f"{where}: output_dir {output_dir} is a file, expected a folder")
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"{where}: cannot create output_dir {output_dir}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"{where}: output_dir {output_dir} is not writable ({existing} is read-only)")


def _lock_holder_alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir/run.lock` for the run, so a second training into the same folder fails at once.

    Only the main process of a distributed run takes the lock (every process trains into one folder).
    A lock left by a process that no longer runs on this machine is taken over, with a message.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create output_dir {output_dir} ({first_line(err)})") from err
    lock = output_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            if _lock_holder_alive(holder):
                raise RunFolderError(
                    f"{output_dir} is in use by another training (process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, {lock}); wait for it or choose another output_dir"
                ) from None
            print(f"Taking over {lock}: process {holder.get('pid', '?')} that held it no longer runs")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as handle:
            json.dump(me, handle)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created and not any(output_dir.iterdir()):
            output_dir.rmdir()  # a run refused before writing anything leaves no folder behind


def resume_checkpoint(output_dir: Path, resume: str | bool | None, overwrite: bool) -> str | None:
    """The checkpoint a run starts from (None: step 0), after checking what the output folder holds.

    - a folder with checkpoints or a model, and neither resume nor overwrite: RunFolderError;
    - overwrite: its checkpoints and model folders are deleted (nothing else in it);
    - resume=True: the newest complete checkpoint, said on stdout with the incomplete ones skipped;
      step 0 (said too) when there is none;
    - resume=PATH: that checkpoint, which must be complete.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pass one")
    checkpoints = list_checkpoints(output_dir)
    finished = [output_dir / name for name in ("model", "model.partial") if (output_dir / name).exists()]
    if overwrite:
        for path in [c.path for c in checkpoints] + finished:
            shutil.rmtree(path)
        return None
    if not resume:
        if checkpoints or finished:
            held = ", ".join([c.path.name for c in checkpoints] + [p.name for p in finished])
            raise RunFolderError(
                f"{output_dir} already holds a run ({held}): pass --resume to continue it from its newest "
                f"complete checkpoint, or --overwrite to delete them and start again from step 0"
            )
        return None
    if resume is not True:
        path = Path(resume)
        if not path.is_dir():
            raise ConfigError(f"--resume {path}: no such checkpoint folder")
        problem = checkpoint_problem(path)
        if problem:
            raise ConfigError(f"--resume {path}: incomplete checkpoint ({problem}); pass --resume alone")
        print(f"Resuming from {path}")
        return str(path)
    newest, skipped = newest_complete(output_dir)
    for checkpoint in skipped:
        print(f"Ignoring incomplete {checkpoint.path} ({checkpoint.problem})")
    if newest is None:
        print(f"No complete checkpoint in {output_dir}: starting from step 0")
        return None
    print(f"Resuming from {newest.path} (step {newest.step})")
    return str(newest.path)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _model_fields(config: PreTrainedConfig) -> set[str]:
    """The options a backbone's config class declares (and model_type): what says which model it is.
    The generic PreTrainedConfig attributes are left out: the Trainer changes some (`use_cache`)."""
    fields = {"model_type"}
    for cls in type(config).__mro__:
        if issubclass(cls, PreTrainedConfig) and not cls.__module__.startswith("transformers."):
            fields.update(
                name for name, kind in inspect.get_annotations(cls).items() if "ClassVar" not in str(kind)
            )
    return fields


def _differences(saved: Any, expected: Any, path: str = "") -> list[str]:
    """`key there, value here` for each value that differs, nested dicts and lists followed by path
    (`members[1].vocab_size`), so an ensemble's difference is named by member."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        keys = sorted(set(saved) | set(expected))
        missing = object()
        found = []
        for key in keys:
            there, here = saved.get(key, missing), expected.get(key, missing)
            name = f"{path}.{key}" if path else str(key)
            if there is missing or here is missing:
                if there != here:
                    found.append(
                        f"{name} {'absent' if there is missing else _short(there)} there, "
                        f"{'absent' if here is missing else _short(here)} in this run"
                    )
                continue
            found += _differences(there, here, name)
        return found
    if isinstance(saved, list) and isinstance(expected, list) and len(saved) == len(expected):
        return [
            d
            for i, (a, b) in enumerate(zip(saved, expected, strict=True))
            for d in _differences(a, b, f"{path}[{i}]")
        ]
    return [] if saved == expected else [f"{path} {_short(saved)} there, {_short(expected)} in this run"]


def checkpoint_mismatch(
    checkpoint: str | Path, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase
) -> str | None:
    """Why a checkpoint is not one of the run about to resume from it (None when it is).

    Its `config.json` must be the model config this run builds (backbone, sizes, options: another
    architecture or other settings), and its tokenizer, when it saved one, the run's vocabulary (another
    corpus or vocabulary file).
    """
    checkpoint = Path(checkpoint)
    try:
        saved = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError) as err:
        return f"{checkpoint / 'config.json'} cannot be read ({first_line(err)})"
    # As save_pretrained writes it (the values that differ from the class defaults), through JSON so
    # tuples are lists and numbers compare as the file holds them.
    expected = json.loads(config.to_json_string(use_diff=True))
    fields = _model_fields(config)
    differences = _differences(
        {k: v for k, v in saved.items() if k in fields}, {k: v for k, v in expected.items() if k in fields}
    )
    if differences:
        shown = "; ".join(differences[:3]) + (
            f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
        )
        return f"its config.json is another model's: {shown}"
    vocabulary = checkpoint / "tokenizer.json"
    if vocabulary.is_file():
        try:
            saved_vocab = json.loads(vocabulary.read_text()).get("model", {}).get("vocab")
        except (OSError, ValueError, AttributeError):
            saved_vocab = None
        if isinstance(saved_vocab, dict) and saved_vocab != tokenizer.get_vocab():
            return (
                f"its tokenizer.json holds another vocabulary ({len(saved_vocab)} tokens there, "
                f"{len(tokenizer)} in this run: another corpus or data.vocab)"
            )
    return None


def refuse_foreign_checkpoint(
    checkpoint: str | None, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase, where: str
) -> None:
    """ConfigError (one line) when the checkpoint to resume from belongs to another run."""
    if checkpoint is None:
        return
    problem = checkpoint_mismatch(checkpoint, config, tokenizer)
    if problem:
        raise ConfigError(
            f"{where}: --resume {checkpoint}: not a checkpoint of this run: {problem}; resume with the run "
            "config that wrote it, or pass --overwrite to start this run from step 0"
        )
