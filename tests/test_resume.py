"""Resume you can trust: complete checkpoints, refusals, and runs killed by SIGKILL that end as if never
interrupted (the same weights, byte for byte, and the same test metrics)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modeling_ccr.artifacts.checkpoints import (
    COMPLETE_MARKER,
    checkpoint_problem,
    mark_complete,
    newest_complete,
    rotate_checkpoints,
)
from modeling_ccr.cli import main
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.errors import ConfigError
from modeling_ccr.text.tokenization import build_word_tokenizer
from modeling_ccr.training.experiment import run_experiment
from modeling_ccr.training.model_building import build_model
from modeling_ccr.training.run_config import load_experiment_config
from modeling_ccr.training.run_folder import RunFolderError, checkpoint_mismatch, resume_checkpoint

TESTS = Path(__file__).parent
WORKER = TESTS / "resume_worker.py"


def fake_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "trainer_state.json", "optimizer.pt"):
        (folder / name).write_text(f"{name} of step {step}")
    if complete:
        mark_complete(folder, {"step": step})
    return folder


# ------------------------------------------------------------------------------- complete checkpoints
def test_a_checkpoint_is_complete_only_once_marked(tmp_path):
    folder = fake_checkpoint(tmp_path, 4, complete=False)
    assert "its write was interrupted" in checkpoint_problem(folder)
    mark_complete(folder)
    assert checkpoint_problem(folder) is None


def test_a_checkpoint_whose_file_changed_size_or_vanished_is_incomplete(tmp_path):
    folder = fake_checkpoint(tmp_path, 4)
    (folder / "optimizer.pt").write_text("cut")
    assert "optimizer.pt is 3 bytes" in checkpoint_problem(folder)
    (folder / "trainer_state.json").unlink()
    assert "trainer_state.json missing" in checkpoint_problem(folder)


def test_resume_takes_the_newest_complete_checkpoint_and_reports_the_others(tmp_path, capsys):
    fake_checkpoint(tmp_path, 88)
    (tmp_path / "checkpoint-92").mkdir()  # empty: killed as it was created
    broken = fake_checkpoint(tmp_path, 90, complete=False)
    (broken / "trainer_state.json").unlink()
    newest, skipped = newest_complete(tmp_path)
    assert newest.step == 88 and [c.step for c in skipped] == [90, 92]
    assert resume_checkpoint(tmp_path, True, overwrite=False) == str(tmp_path / "checkpoint-88")
    out = capsys.readouterr().out
    assert f"Resuming from {tmp_path / 'checkpoint-88'} (step 88)" in out
    assert "Ignoring incomplete" in out and "checkpoint-90" in out and "no trainer_state.json" in out
    assert "checkpoint-92" in out


def test_resume_of_a_named_incomplete_checkpoint_is_refused(tmp_path):
    folder = fake_checkpoint(tmp_path, 4, complete=False)
    with pytest.raises(ConfigError, match="incomplete checkpoint"):
        resume_checkpoint(tmp_path, str(folder), overwrite=False)


def test_a_new_run_into_a_folder_with_checkpoints_is_refused(tmp_path):
    fake_checkpoint(tmp_path, 8)
    with pytest.raises(RunFolderError, match=r"checkpoint-8.*--resume.*--overwrite"):
        resume_checkpoint(tmp_path, None, overwrite=False)
    (tmp_path / "checkpoint-8").rename(tmp_path / "model")
    with pytest.raises(RunFolderError, match=r"\(model\)"):
        resume_checkpoint(tmp_path, None, overwrite=False)


def test_overwrite_deletes_checkpoints_and_model_but_nothing_else(tmp_path):
    fake_checkpoint(tmp_path, 8)
    (tmp_path / "model").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    assert resume_checkpoint(tmp_path, None, overwrite=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_with_nothing_to_resume_starts_at_step_zero_and_says_so(tmp_path, capsys):
    assert resume_checkpoint(tmp_path, True, overwrite=False) is None
    assert "starting from step 0" in capsys.readouterr().out


def test_rotation_keeps_the_newest_and_the_best_and_drops_leftovers(tmp_path):
    for step in (2, 4, 6, 8):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 7, complete=False)
    deleted = rotate_checkpoints(tmp_path, keep=2, protected={tmp_path / "checkpoint-2"})
    assert sorted(c.step for c in deleted) == [4, 6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-8"]


# ------------------------------------------------------------------------------- another run's checkpoint
def checkpoint_of(run_dir: Path, step: int, section: dict, feature_dim: int, captions: list[str]) -> Path:
    """A complete checkpoint folder as the Trainer writes one (config, weights, tokenizer, state)."""
    folder = run_dir / f"checkpoint-{step}"
    tokenizer = build_word_tokenizer(captions, min_count=1)
    build_model(section, tokenizer, feature_dim, "test").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    mark_complete(folder, {"step": step})
    return folder


def tiny_config(tmp_path: Path, **model) -> Path:
    config = yaml.safe_load(run_config(tmp_path, "run").read_text())
    config["model"].update(model)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_resume_from_a_checkpoint_of_another_architecture_is_one_line_naming_what_differs(tmp_path, capsys):
    config = tiny_config(tmp_path)
    run = yaml.safe_load(config.read_text())
    corpus = build_synthetic_corpus(SyntheticCorpusConfig(**{"seed": 5, **run["data"]["synthetic"]}))
    captions = [c for row in corpus["train"]["captions"] for c in row]
    other = checkpoint_of(tmp_path / "other", 4, {**run["model"], "embed_dim": 32}, 16, captions)
    assert main(["train", str(config), "--resume", str(other)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ccr ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"--resume {other}: not a checkpoint of this run" in errors[0]
    assert "embed_dim 32 there, 16 in this run" in errors[0]
    assert not (tmp_path / "run" / "model").exists()


def test_resume_from_a_checkpoint_with_another_vocabulary_is_refused(tmp_path):
    config = load_experiment_config(tiny_config(tmp_path))
    corpus = build_synthetic_corpus(SyntheticCorpusConfig(**{"seed": 5, **config.data.synthetic}))
    captions = [c for row in corpus["train"]["captions"] for c in row]
    tokenizer = build_word_tokenizer(captions, min_count=1)
    # As many words as the run's vocabulary, but other ones: the config alone cannot tell.
    words = " ".join(f"w{i}" for i in range(len(tokenizer) - 4))
    other = checkpoint_of(tmp_path / "other", 4, config.model.to_dict(), 16, [words])
    model = build_model(config.model, tokenizer, 16, "test")
    assert checkpoint_mismatch(tmp_path / "other" / "checkpoint-4", model.config, tokenizer).startswith(
        "its tokenizer.json holds another vocabulary"
    )
    with pytest.raises(ConfigError, match=r"not a checkpoint of this run: its tokenizer\.json holds another"):
        run_experiment(config, resume_from_checkpoint=str(other))


def test_a_checkpoint_of_the_same_run_is_accepted(tmp_path):
    config = load_experiment_config(tiny_config(tmp_path))
    corpus = build_synthetic_corpus(SyntheticCorpusConfig(**{"seed": 5, **config.data.synthetic}))
    captions = [c for row in corpus["train"]["captions"] for c in row]
    same = checkpoint_of(tmp_path / "same", 4, config.model.to_dict(), 16, captions)
    model = build_model(config.model, build_word_tokenizer(captions, min_count=1), 16, "test")
    model.config.use_cache = False  # the Trainer sets it while training; it says nothing of the model
    assert checkpoint_mismatch(same, model.config, build_word_tokenizer(captions, min_count=1)) is None


# ------------------------------------------------------------------------------- killed processes
def run_config(tmp_path: Path, name: str) -> Path:
    config = {
        "seed": 5,
        "output_dir": str(tmp_path / name),
        "data": {
            "source": "synthetic",
            "synthetic": {"train_images": 48, "validation_images": 10, "test_images": 10, "feature_dim": 16},
            "min_word_count": 1,
        },
        "model": {"backbone": "scan", "embed_dim": 16, "word_dim": 8, "ccr_weight": 0.1, "ccs_weight": 0.1},
        "training": {
            "max_steps": 6,
            "per_device_train_batch_size": 16,
            "eval_strategy": "steps",
            "save_strategy": "steps",
            "eval_steps": 2,
            "save_steps": 2,
            "logging_steps": 1,
            "save_total_limit": 2,
            "learning_rate": 1e-3,
            "lr_decay_epochs": 0.2,
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(kill_at: str, config: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), kill_at, "train", str(config), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen, expect_killed: bool) -> str:
    out, _ = process.communicate(timeout=600)
    if expect_killed:
        assert process.returncode == -signal.SIGKILL, out[-3000:]
    else:
        assert process.returncode == 0, out[-3000:]
    return out


def outcome(run_dir: Path) -> tuple[bytes, dict]:
    model = run_dir / "model"
    metrics = json.loads((model / "eval_results_test.json").read_text())["metrics"]
    return (model / "model.safetensors").read_bytes(), metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reference")
    finish(start("none", run_config(tmp_path, "run")), expect_killed=False)
    return outcome(tmp_path / "run")


@pytest.mark.slow
def test_runs_killed_in_a_checkpoint_write_at_random_and_in_the_final_save_end_as_if_uninterrupted(
    reference, tmp_path
):
    config = run_config(tmp_path, "run")
    run_dir = tmp_path / "run"
    # 1. SIGKILL while checkpoint-4 is being written: weights and optimizer on disk, no trainer state.
    finish(start("checkpoint:4", config), expect_killed=True)
    assert checkpoint_problem(run_dir / "checkpoint-4") is not None
    refused = subprocess.run(
        [sys.executable, str(WORKER), "none", "train", str(config)], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    # 2. Resumed, then SIGKILL at a random moment once it trains again.
    process = start("none", config, "--resume")
    marker = run_dir / "checkpoint-4" / COMPLETE_MARKER
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.5))
    process.send_signal(signal.SIGKILL)
    out = process.communicate(timeout=60)[0]
    assert f"Resuming from {run_dir / 'checkpoint-2'} (step 2)" in out
    assert "Ignoring incomplete" in out and "checkpoint-4" in out
    # 3. Resumed, then SIGKILL halfway through writing the final model.
    out = finish(start("final-save", config, "--resume"), expect_killed=True)
    assert "Resuming from" in out
    assert (run_dir / "model.partial").exists(), "a model being written is never under the final name"
    # 4. Resumed to the end.
    out = finish(start("none", config, "--resume"), expect_killed=False)
    assert "Resuming from" in out
    weights, metrics = outcome(run_dir)
    assert weights == reference[0], "resumed weights differ from the uninterrupted run's"
    assert metrics == reference[1]
    info = json.loads((run_dir / "model" / "run_info.json").read_text())
    assert info["sessions"][0]["resumed_from"] is None
    assert Path(info["sessions"][-1]["resumed_from"]).name.startswith("checkpoint-")
    assert info["train_seconds"] == pytest.approx(sum(s["seconds"] for s in info["sessions"]), abs=0.2)
    logged_steps = [entry["step"] for entry in info["log_history"] if "loss" in entry]
    assert logged_steps == [1, 2, 3, 4, 5, 6], "the log covers every session"
