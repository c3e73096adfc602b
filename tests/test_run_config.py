"""The typed run configuration means what the dict schema before it meant, for every shipped config.

`fixtures/resolved_configs.json` was written by the dict-schema code (commit 5f8c179, before
`training/run_config.py`): for each `configs/*.yaml`, and each cell of each ablation grid, the resolved
data, model and evaluation sections, the training keys the file set, MatchingTrainer's options, and every
`TrainingArguments` value the run was built with (stored as the values that differ from transformers'
defaults, which are stored once). Each config is loaded here through the typed classes and compared.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from modeling_ccr.data.corpora import DataConfig
from modeling_ccr.training.ablation import load_ablation, run_config
from modeling_ccr.training.run_config import (
    MATCHING_TRAINER,
    EvaluationConfig,
    ModelSection,
    RunTrainingArguments,
    load_experiment_config,
    parse_experiment_config,
)

ROOT = Path(__file__).parents[1]
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "resolved_configs.json").read_text())


def shipped_configs() -> dict:
    """{fixture key: ExperimentConfig} of every shipped config and every cell of every ablation grid."""
    configs = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if not path.name.startswith("ablation_"):
            configs[path.name] = load_experiment_config(path)
            continue
        ablation = load_ablation(path)
        corpus = {"data.source": str(ablation.corpus["path"])} if ablation.corpus else {}
        for cell in ablation.runs:
            key = f"{path.name} {cell.model}/{cell.variant}/seed{cell.seed}"
            configs[key] = run_config(ablation, cell, corpus)
    return configs


CONFIGS = shipped_configs()


# Keys a section gained after the fixture was written, with the default that keeps the old behaviour.
ADDED_SINCE_THE_FIXTURE = {"data": {"augmentation": None}}


def fixture_view(expected: dict) -> dict:
    """A fixture entry with the keys added since, at their defaults."""
    for section, added in ADDED_SINCE_THE_FIXTURE.items():
        expected[section] = {**expected[section], **added}
    return expected


def resolved(config) -> dict:
    """The same view of a config as the fixture's."""
    arguments = json.loads(config.training.to_json_string())
    options = config.training.trainer_options()
    arguments = {k: v for k, v in arguments.items() if k not in options}
    defaults = FIXTURE["training_arguments_defaults"]
    return {
        "seed": config.seed,
        "output_dir": config.output_dir,
        "data": config.data.to_dict(),
        "model": config.model.to_dict(),
        "evaluation": config.evaluation.to_dict(),
        "training_set_in_file": config.training_set,
        "trainer_options": options,
        "training_arguments_not_default": {
            k: v for k, v in arguments.items() if defaults.get(k, object()) != v
        },
    }


def test_every_config_and_ablation_cell_of_the_fixture_still_ships():
    # Configs added after the typed configuration landed (e.g. vse_infty, chan) have no dict-schema
    # resolution to compare with; they are loaded above, which validates them.
    missing = sorted(set(FIXTURE["configs"]) - set(CONFIGS))
    assert not missing, f"no longer shipped: {missing[:5]}"
    assert len(CONFIGS) > 200  # the ablation grids, cell by cell


@pytest.mark.parametrize("key", sorted(FIXTURE["configs"]))
def test_a_shipped_config_resolves_to_the_values_of_the_dict_schema(key):
    expected = fixture_view(json.loads(json.dumps(FIXTURE["configs"][key])))
    # The fixture was written on a CPU machine; the default pins memory where there is a GPU.
    expected["training_arguments_not_default"].pop("dataloader_pin_memory", None)
    found = resolved(CONFIGS[key])
    assert found["training_arguments_not_default"].pop("dataloader_pin_memory", None) in (None, False)
    assert CONFIGS[key].training.dataloader_pin_memory is torch.cuda.is_available()
    assert found == expected


def test_training_config_yaml_records_what_it_recorded_before():
    config = CONFIGS["demo.yaml"]
    expected = fixture_view(json.loads(json.dumps(FIXTURE["configs"]["demo.yaml"])))
    assert config.to_dict() == {
        "seed": expected["seed"],
        "output_dir": expected["output_dir"],
        "data": expected["data"],
        "model": expected["model"],
        "training": expected["training_set_in_file"],
        "evaluation": expected["evaluation"],
    }


def test_each_default_lives_once_on_its_section_class():
    assert DataConfig().min_word_count == 4 and DataConfig().captions_per_image == 5
    assert EvaluationConfig().protocol == "full"
    args = RunTrainingArguments(output_dir="x")
    assert (args.learning_rate, args.max_grad_norm, args.per_device_train_batch_size) == (2e-4, 2.0, 128)
    assert args.trainer_options() == {
        "lr_decay_epochs": 15.0,
        "lr_decay_factor": 0.1,
        "collapse_guard": "warn",
        "hinge_warmup_steps": 0,
        "constraint_warmup_steps": 0,
    }
    ours = {f.name for f in dataclasses.fields(RunTrainingArguments) if f.metadata.get(MATCHING_TRAINER)}
    assert ours == set(args.trainer_options())


def test_sections_are_read_as_attributes():
    config = parse_experiment_config(
        {
            "output_dir": "out",
            "seed": 7,
            "data": {"min_word_count": 2},
            "model": {"backbone": "scan", "embed_dim": 16},
            "training": {"learning_rate": "1e-3", "collapse_guard": "stop"},
        }
    )
    assert config.data.min_word_count == 2 and config.data.source == "synthetic"
    assert config.model == ModelSection("scan", {"embed_dim": 16})
    assert config.training.learning_rate == 1e-3 and config.training.collapse_guard == "stop"
    assert (config.training.output_dir, config.training.seed, config.training.data_seed) == ("out", 7, 7)
    assert config.training_set == {"learning_rate": 1e-3, "collapse_guard": "stop"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"training": {"collapse_guard": "loud"}},
            "run.yaml: training.collapse_guard must be warn, stop or off, found 'loud'",
        ),
        (
            {"evaluation": {"protocol": "half"}},
            "run.yaml: evaluation.protocol must be full, coco_5fold_1k or eccv, found 'half'",
        ),
        ({"evaluation": {"protcol": "full"}}, "run.yaml: unknown key(s) ['protcol'] in section 'evaluation'"),
        ({"training": {"seed": 3}}, "run.yaml: set seed at the top level, not in 'training'"),
        ({"training": {"output_dir": "x"}}, "run.yaml: set output_dir at the top level, not in 'training'"),
        ({"data": {"streaming": "no"}}, "run.yaml: data.streaming must be bool, found 'no'"),
        (
            {"model": {"backbone": "ensemble", "members": [{"backbone": "scan", "embed_dim": "big"}]}},
            "run.yaml: model.embed_dim must be int",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_file_field_expected_and_found(raw, message):
    from modeling_ccr.errors import ConfigError

    base = {"output_dir": "out", "model": {"backbone": "scan"}}
    with pytest.raises(ConfigError) as caught:
        parse_experiment_config({**base, **raw}, "run.yaml")
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)
