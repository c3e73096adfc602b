"""Experiment tracking: a tiny run with `report_to: tensorboard`, its event files read back."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("matplotlib")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from modeling_ccr.training.experiment import parse_experiment_config, run_experiment

TINY_CORPUS = {"train_images": 64, "validation_images": 12, "test_images": 12, "feature_dim": 32}


def tracked_run(tmp_path, report_to="tensorboard", max_steps=4) -> dict:
    return {
        "seed": 1,
        "output_dir": str(tmp_path / "run"),
        "data": {"source": "synthetic", "synthetic": dict(TINY_CORPUS), "min_word_count": 1},
        "model": {"backbone": "scan", "embed_dim": 16, "word_dim": 8, "ccr_weight": 1.0, "ccs_weight": 1.0},
        "training": {
            "max_steps": max_steps,
            "per_device_train_batch_size": 16,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "save_strategy": "no",
            "load_best_model_at_end": False,
            "logging_steps": 1,
            "disable_tqdm": True,
            "report_to": report_to,
        },
    }


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tracking")
    model_dir = run_experiment(parse_experiment_config(tracked_run(tmp_path)))
    # The Trainer's TensorBoard integration writes under <output_dir>/runs/<date>_<host>/.
    event_files = list((tmp_path / "run" / "runs").rglob("events.out.tfevents.*"))
    assert event_files, "the run wrote no TensorBoard event file"
    accumulator = EventAccumulator(str(event_files[0].parent), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator, model_dir


def scalar_steps(accumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Scalars(tag)]


def test_each_logging_step_records_the_base_loss_each_constraint_term_and_its_hinge_activation_rate(events):
    accumulator, _ = events
    tags = accumulator.Tags()["scalars"]
    for name in ("loss", "base_loss", "ccr_loss", "ccs_loss", "ccr_active_fraction", "ccs_active_fraction"):
        assert f"train/{name}" in tags, (name, tags)
        assert scalar_steps(accumulator, f"train/{name}") == [1, 2, 3, 4], name
    for fraction in ("ccr_active_fraction", "ccs_active_fraction"):
        assert all(0.0 <= event.value <= 1.0 for event in accumulator.Scalars(f"train/{fraction}"))


def test_the_logged_terms_are_the_ones_the_trainer_recorded_in_its_history(events):
    accumulator, model_dir = events
    history = json.loads((model_dir / "run_info.json").read_text())["log_history"]
    recorded = [entry["ccr_loss"] for entry in history if "ccr_loss" in entry]
    logged = [event.value for event in accumulator.Scalars("train/ccr_loss")]
    assert logged == pytest.approx(recorded, abs=1e-4)


def test_each_evaluation_records_retrieval_and_attention_metrics(events):
    accumulator, _ = events
    tags = accumulator.Tags()["scalars"]
    for name in ("rsum", "i2t_r1", "t2i_r1", "attention_precision", "attention_recall", "attention_f1"):
        assert f"eval/{name}" in tags, (name, tags)
        assert scalar_steps(accumulator, f"eval/{name}") == [2, 4], name
    assert all(0.0 <= event.value <= 1.0 for event in accumulator.Scalars("eval/attention_f1"))


def test_each_evaluation_records_attention_pictures_as_images(events):
    accumulator, _ = events
    image_tags = [tag for tag in accumulator.Tags()["images"] if tag.startswith("eval/attention/")]
    assert len(image_tags) == 2, image_tags
    pictures = accumulator.Images(image_tags[0])
    assert [picture.step for picture in pictures] == [2, 4]
    assert pictures[0].encoded_image_string.startswith(b"\x89PNG")
    assert pictures[0].width > 200 and pictures[0].height > 200


def test_without_tensorboard_the_attention_metrics_still_reach_the_run_history(tmp_path):
    model_dir = run_experiment(parse_experiment_config(tracked_run(tmp_path, report_to="none", max_steps=2)))
    history = json.loads((model_dir / "run_info.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_attention_f1" in entry] == [2]
    assert not (tmp_path / "run" / "runs").exists()
