"""Training that notices when it goes wrong: non-finite losses and gradients stop the run at once with the
step, the batch's image ids and the term; no model with non-finite weights is saved; collapse is reported."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
import yaml
from transformers import TrainingArguments

from modeling_ccr.artifacts.checkpoints import checkpoint_problem, list_checkpoints
from modeling_ccr.cli import main
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.models.configuration_scan import ScanConfig
from modeling_ccr.models.modeling_scan import ScanModel
from modeling_ccr.training import experiment
from modeling_ccr.training.trainer import (
    CollapseWarning,
    MatchingTrainer,
    TrainingCollapsedError,
    TrainingDivergedError,
)

TINY = {"train_images": 48, "validation_images": 10, "test_images": 10, "feature_dim": 16}
BAD_IMAGES = (5, 17, 30)


def corpus_with_huge_features(tmp_path):
    """The built-in corpus saved to disk, with three training images whose features are 3e38."""
    corpus = build_synthetic_corpus(SyntheticCorpusConfig(seed=1, **TINY))

    def blow_up(row, index):
        if index in BAD_IMAGES:
            row["features"] = np.full_like(np.asarray(row["features"]), 3e38)
        return row

    corpus["train"] = corpus["train"].map(blow_up, with_indices=True)
    path = tmp_path / "corpus"
    corpus.save_to_disk(str(path))
    return path, [corpus["train"][i]["image_id"] for i in BAD_IMAGES]


def run_yaml(tmp_path, source="synthetic", **training):
    config = {
        "seed": 2,
        "output_dir": str(tmp_path / "run"),
        "data": {"source": str(source), "min_word_count": 1}
        | ({"synthetic": TINY} if source == "synthetic" else {}),
        "model": {"backbone": "scan", "embed_dim": 16, "word_dim": 8, "ccr_weight": 0.1, "ccs_weight": 0.1},
        "training": {
            "max_steps": 12,
            "per_device_train_batch_size": 16,
            "eval_strategy": "no",
            "save_strategy": "steps",
            "save_steps": 1,
            "save_total_limit": 2,
            "load_best_model_at_end": False,
            "logging_steps": 1,
            "disable_tqdm": True,
            **training,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_huge_features_stop_training_at_the_first_nan_step_naming_step_images_and_term(
    tmp_path, monkeypatch, capsys
):
    source, bad_ids = corpus_with_huge_features(tmp_path)
    # The validator refuses such features (test_validation.py); here they reach the Trainer regardless.
    monkeypatch.setattr(experiment, "validate_corpus", lambda *args, **kwargs: None)
    assert main(["train", str(run_yaml(tmp_path, source))]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ccr ")]
    assert len(errors) == 1 and "Traceback" not in err
    err = errors[0]
    step = int(err.split("training stopped at step ")[1].split(":")[0])
    assert "non-finite loss from the base" in err
    assert "region features reach |x| = 3e+38" in err
    report = json.loads((tmp_path / "run" / "divergence.json").read_text())
    assert report["step"] == step and set(bad_ids) & set(report["image_ids"])
    assert report["terms"]["base"] != report["terms"]["base"], "the base term is NaN"
    saved = list_checkpoints(tmp_path / "run")
    assert all(c.step < step and checkpoint_problem(c.path) is None for c in saved)
    if step > 1:
        assert saved[-1].step == step - 1 and f"last good checkpoint is {saved[-1].path}" in err
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "model.partial").exists()


def test_a_non_finite_gradient_stops_before_the_optimizer_step_naming_the_terms(
    tmp_path, monkeypatch, capsys
):
    build_model = experiment.build_model

    def model_with_a_nan_gradient(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.get_parameter("region_encoder.projection.weight").register_hook(lambda grad: grad * math.nan)
        return model

    monkeypatch.setattr(experiment, "build_model", model_with_a_nan_gradient)
    assert main(["train", str(run_yaml(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "training stopped at step 1: non-finite gradient from the base" in err
    assert "no checkpoint was saved yet" in err
    assert list_checkpoints(tmp_path / "run") == []


def tiny_trainer(tmp_path, **kwargs):
    model = ScanModel(ScanConfig(feature_dim=8, vocab_size=12, embed_dim=8, word_dim=4))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    return MatchingTrainer(model=model, args=args, **kwargs)


def test_a_model_with_a_non_finite_weight_is_never_saved(tmp_path):
    trainer = tiny_trainer(tmp_path)
    with torch.no_grad():
        trainer.model.get_parameter("region_encoder.projection.bias")[0] = math.inf
    with pytest.raises(
        TrainingDivergedError, match=r"1 weight tensor\(s\) are non-finite \(region_encoder.projection.bias"
    ):
        trainer.save_model(str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()


def chance_like_metrics() -> dict:
    return {"n_images": 10, "n_captions": 50, "rsum": 0.0, "i2t_r1": 0.0, "t2i_r1": 0.0}


@pytest.mark.parametrize("guard", ["warn", "stop", "off"])
def test_validation_at_chance_after_the_first_epoch_warns_stops_or_passes(tmp_path, guard):
    trainer = tiny_trainer(tmp_path, collapse_guard=guard)
    trainer.is_in_train, trainer.state.epoch, trainer.state.global_step = True, 1.0, 30
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if guard == "stop":
            with pytest.raises(TrainingCollapsedError, match=r"rSum 0.00 vs chance \d+\.\d\d"):
                trainer._check_collapse(chance_like_metrics())
        else:
            trainer._check_collapse(chance_like_metrics())
    collapses = [w for w in caught if issubclass(w.category, CollapseWarning)]
    assert len(collapses) == (1 if guard == "warn" else 0)
    if guard == "warn":
        assert "after epoch 1.00 (step 30)" in str(collapses[0].message)
        assert trainer.collapse_warnings == [str(collapses[0].message)]


def test_validation_at_chance_before_the_end_of_the_first_epoch_is_not_a_collapse(tmp_path):
    trainer = tiny_trainer(tmp_path, collapse_guard="stop")
    trainer.is_in_train, trainer.state.epoch = True, 0.5
    trainer._check_collapse(chance_like_metrics())


@pytest.mark.slow
def test_a_learning_rate_of_1e30_is_caught_as_a_collapse_not_reported_as_a_result(tmp_path, capsys):
    config = run_yaml(
        tmp_path,
        learning_rate=1e30,
        max_steps=30,
        eval_strategy="steps",
        eval_steps=10,
        collapse_guard="stop",
    )
    assert main(["train", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "at or below chance" in error and "learning_rate" in error, error
    assert not (tmp_path / "run" / "model" / "eval_results_test.json").exists()
