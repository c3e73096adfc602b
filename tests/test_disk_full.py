"""A full disk (ENOSPC) while a run writes a checkpoint or its model: one line saying what was kept."""

from __future__ import annotations

import errno
import os

import torch
import yaml

from modeling_ccr.artifacts.checkpoints import checkpoint_problem, list_checkpoints
from modeling_ccr.cli import USER_ERROR_EXIT_CODE, main

RUN = {
    "seed": 0,
    "data": {
        "min_word_count": 1,
        "synthetic": {"train_images": 32, "validation_images": 6, "test_images": 6, "feature_dim": 8},
    },
    "model": {"backbone": "scan", "embed_dim": 8, "word_dim": 4},
    "training": {
        "max_steps": 3,
        "per_device_train_batch_size": 16,
        "eval_strategy": "no",
        "save_strategy": "steps",
        "save_steps": 1,
        "save_total_limit": 5,
        "load_best_model_at_end": False,
        "disable_tqdm": True,
    },
}


def run_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**RUN, "output_dir": str(tmp_path / "run")}))
    return path


def disk_full_when_writing_into(monkeypatch, folder_name: str) -> None:
    """torch.save raises ENOSPC for any file of a folder named `folder_name` (as a full disk would)."""
    save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):
        if (
            isinstance(f, (str, os.PathLike))
            and os.path.basename(os.path.dirname(os.fspath(f))) == folder_name
        ):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(f))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_save)


def one_line_error(path, capsys) -> str:
    assert main(["train", str(path)]) == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ccr ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_full_disk_during_a_checkpoint_says_which_checkpoints_were_kept(tmp_path, monkeypatch, capsys):
    disk_full_when_writing_into(monkeypatch, "checkpoint-2")
    err = one_line_error(run_yaml(tmp_path), capsys)
    run_dir = tmp_path / "run"
    assert "the disk is full" in err and "No space left on device" in err and "while training" in err
    assert f"the checkpoints up to {run_dir / 'checkpoint-1'} are kept" in err
    assert "checkpoint-2 is incomplete" in err and "--resume" in err
    assert checkpoint_problem(run_dir / "checkpoint-1") is None
    assert [c.step for c in list_checkpoints(run_dir) if c.complete] == [1]
    assert not (run_dir / "model").exists()


def test_a_full_disk_during_the_final_save_keeps_the_checkpoints_and_no_partial_model(
    tmp_path, monkeypatch, capsys
):
    disk_full_when_writing_into(monkeypatch, "model.partial")
    err = one_line_error(run_yaml(tmp_path), capsys)
    run_dir = tmp_path / "run"
    assert "the disk is full" in err and "while saving the model" in err
    assert f"the checkpoints up to {run_dir / 'checkpoint-3'} are kept" in err
    assert "model.partial was deleted" in err and "--resume" in err
    assert not (run_dir / "model.partial").exists() and not (run_dir / "model").exists()
    assert checkpoint_problem(run_dir / "checkpoint-3") is None


def test_only_enospc_is_called_a_full_disk():
    from modeling_ccr.training.experiment import _disk_full

    assert not _disk_full(PermissionError(errno.EACCES, "Permission denied"))
    assert not _disk_full(OSError("boom"))
    assert _disk_full(OSError(errno.ENOSPC, "disk quota"))
    # safetensors wraps the OS error in its own exception, with the errno in the text.
    assert _disk_full(RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"))
