"""`training.lr_decay_epochs` as epoch milestones (LAPS: x0.3 at epochs 9, 15, 20, 25) beside the period.

The learning rates are those a real `MatchingTrainer`'s scheduler gives; the expectations are written out
step by step here (a milestone at epoch e is step ceil(e * steps_per_epoch), the first step at the lower
rate), not computed by the scheduler's own formula.
"""

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainingArguments

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.cli import USER_ERROR_EXIT_CODE, main
from modeling_ccr.cli.run import parse_overrides
from modeling_ccr.data.config_fields import FieldValueError
from modeling_ccr.errors import ConfigError
from modeling_ccr.resources import resolve_config
from modeling_ccr.training.experiment import run_experiment
from modeling_ccr.training.run_config import (
    RunTrainingArguments,
    load_experiment_config,
    parse_experiment_config,
)
from modeling_ccr.training.trainer import MatchingTrainer

ROOT = Path(__file__).parents[1]
LR, FACTOR = 2e-4, 0.3
BATCH, STEPS_PER_EPOCH = 4, 4


def scheduled_rates(lr_decay_epochs, steps: int) -> list[float]:
    """The learning rate of each of the first `steps` optimizer steps (step 0 first) of a MatchingTrainer
    with STEPS_PER_EPOCH steps per epoch; every parameter group has the same."""
    torch.manual_seed(0)
    model = ScanModel(ScanConfig(feature_dim=6, embed_dim=4, vocab_size=10, word_dim=3))
    args = TrainingArguments(
        output_dir="unused",
        learning_rate=LR,
        per_device_train_batch_size=BATCH,
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
    )
    trainer = MatchingTrainer(
        model=model,
        args=args,
        train_dataset=list(range(STEPS_PER_EPOCH * BATCH + BATCH - 1)),  # a partial batch is dropped
        lr_decay_epochs=lr_decay_epochs,
        lr_decay_factor=FACTOR,
    )
    assert trainer.steps_per_epoch() == STEPS_PER_EPOCH
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    rates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scheduler is stepped without optimizer steps, on purpose
        for _ in range(steps):
            groups = {group["lr"] for group in trainer.optimizer.param_groups}
            assert len(groups) == 1, groups
            rates.append(groups.pop())
            trainer.lr_scheduler.step()
    return rates


# --------------------------------------------------------------------------------------------- schedule
def test_each_milestone_multiplies_the_rate_once_from_its_first_step():
    # 4 steps per epoch: epoch 1 -> step 4, epoch 2.6 -> ceil(10.4) = step 11, epoch 4 -> step 16.
    rates = scheduled_rates([1, 2.6, 4], steps=20)
    expected = {
        0: LR,
        3: LR,
        4: LR * FACTOR,
        5: LR * FACTOR,
        10: LR * FACTOR,
        11: LR * FACTOR * FACTOR,
        12: LR * FACTOR * FACTOR,
        15: LR * FACTOR * FACTOR,
        16: LR * FACTOR * FACTOR * FACTOR,
        19: LR * FACTOR * FACTOR * FACTOR,
    }
    for step, rate in expected.items():
        assert rates[step] == pytest.approx(rate, rel=1e-12), step
    assert len(set(rates)) == 4  # nothing else changes it


def test_milestones_past_the_end_of_the_run_never_act():
    assert scheduled_rates([9, 15, 20, 25], steps=30) == pytest.approx([LR] * 30, rel=1e-12)


def test_the_period_is_unchanged_and_equals_its_milestones():
    # A period of 2.5 epochs is every ceil(2.5 * 4) = 10 steps: steps 10 and 20 are the first decayed ones.
    rates = scheduled_rates(2.5, steps=25)
    expected = [LR] * 10 + [LR * FACTOR] * 10 + [LR * FACTOR * FACTOR] * 5
    assert rates == pytest.approx(expected, rel=1e-12)
    assert scheduled_rates([2.5, 5.0], steps=25) == rates


# --------------------------------------------------------------------------------------------- validation
def minimal(value) -> dict:
    return {"output_dir": "out", "model": {"backbone": "scan"}, "training": {"lr_decay_epochs": value}}


def test_a_list_is_read_as_float_milestones_and_recorded_as_such():
    config = parse_experiment_config(minimal([9, 15, 20, 25]))
    assert config.training.lr_decay_epochs == [9.0, 15.0, 20.0, 25.0]
    assert config.training.trainer_options()["lr_decay_epochs"] == [9.0, 15.0, 20.0, 25.0]
    recorded = config.to_dict()["training"]["lr_decay_epochs"]
    assert recorded == [9.0, 15.0, 20.0, 25.0] and all(type(epoch) is float for epoch in recorded)


@pytest.mark.parametrize(("value", "period"), [(15, 15.0), (0.2, 0.2), ("15", 15.0), (None, None)])
def test_a_number_and_null_read_as_before(value, period):
    config = parse_experiment_config(minimal(value))
    assert config.training.lr_decay_epochs == period
    assert config.training_set["lr_decay_epochs"] == period
    assert type(config.training_set["lr_decay_epochs"]) is type(period)


EXPECTED = "a positive number of epochs (a period), a non-empty strictly increasing list of positive epochs"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], f"training.lr_decay_epochs must be {EXPECTED} (milestones) or null, found an empty list"),
        ([9, 9], "training.lr_decay_epochs must be strictly increasing, found 9 after 9 in [9, 9]"),
        ([15, 9], "training.lr_decay_epochs must be strictly increasing, found 9 after 15 in [15, 9]"),
        (
            [9, True],
            "training.lr_decay_epochs[1] must be a positive finite number of epochs, found True (bool)",
        ),
        (["9"], "training.lr_decay_epochs[0] must be a positive finite number of epochs, found '9' (str)"),
        ([0, 3], "training.lr_decay_epochs[0] must be a positive finite number of epochs, found 0 (int)"),
        (
            [-1.5],
            "training.lr_decay_epochs[0] must be a positive finite number of epochs, found -1.5 (float)",
        ),
        (
            [math.inf],
            "training.lr_decay_epochs[0] must be a positive finite number of epochs, found inf (float)",
        ),
        ([[9]], "training.lr_decay_epochs[0] must be a positive finite number of epochs, found [9] (list)"),
        (True, f"training.lr_decay_epochs must be {EXPECTED} (milestones) or null, found True (bool)"),
        (0, f"training.lr_decay_epochs must be {EXPECTED} (milestones) or null, found 0 (int)"),
        (-2, f"training.lr_decay_epochs must be {EXPECTED} (milestones) or null, found -2 (int)"),
        ("often", f"training.lr_decay_epochs must be {EXPECTED} (milestones) or null, found 'often' (str)"),
        (
            {"at": 9},
            f"training.lr_decay_epochs must be {EXPECTED} (milestones) or null, found {{'at': 9}} (dict)",
        ),
    ],
)
def test_a_bad_schedule_is_one_line_naming_the_field_what_was_expected_and_found(value, message):
    with pytest.raises(ConfigError) as raised:
        parse_experiment_config(minimal(value), "run.yaml")
    assert str(raised.value) == f"run.yaml: {message}"


def test_the_training_arguments_check_their_schedule_when_built_directly(tmp_path):
    with pytest.raises(FieldValueError, match=r"^training\.lr_decay_epochs must be strictly increasing"):
        RunTrainingArguments(output_dir=str(tmp_path), lr_decay_epochs=(3, 2))
    assert RunTrainingArguments(output_dir=str(tmp_path), lr_decay_epochs=(2, 3)).lr_decay_epochs == [
        2.0,
        3.0,
    ]


# --------------------------------------------------------------------------------------------- YAML and CLI
def test_the_laps_configs_decay_at_laps_milestones():
    for name in ("laps_vit_f30k", "laps_swin_f30k", "laps_vit_coco", "laps_swin_coco"):
        training = load_experiment_config(resolve_config(name)).training
        assert (training.lr_decay_epochs, training.lr_decay_factor) == ([9.0, 15.0, 20.0, 25.0], 0.3), name


def test_a_set_override_takes_a_yaml_list():
    overrides = parse_overrides(["training.lr_decay_epochs=[9,15]"])
    assert overrides == {"training.lr_decay_epochs": [9, 15]}
    config = load_experiment_config(resolve_config("demo"), overrides)
    assert config.training.lr_decay_epochs == [9.0, 15.0]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("[9,9]", "training.lr_decay_epochs must be strictly increasing"),
        ("[9,x]", "training.lr_decay_epochs[1] must be a positive finite number of epochs, found 'x' (str)"),
        ("[]", "found an empty list"),
        ("[9,15", "is not valid YAML"),
    ],
)
def test_a_bad_schedule_on_the_command_line_is_one_line_without_a_traceback(
    value, fragment, tmp_path, capsys
):
    code = main(
        [
            "train",
            "demo",
            "--set",
            f"output_dir={tmp_path / 'run'}",
            "--set",
            f"training.lr_decay_epochs={value}",
        ]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == USER_ERROR_EXIT_CODE and len(lines) == 1, err
    assert fragment in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- resume
# 32 images x 5 captions in batches of 20: 8 steps per epoch; milestones at epochs 0.375 and 0.625 are
# steps 3 and 5 (exact in binary). The run is resumed from its step-4 checkpoint, between the two.
RESUMED_AT, MILESTONE_STEPS = 4, (3, 5)


def tiny_run(output_dir: Path) -> dict:
    return {
        "seed": 2,
        "output_dir": str(output_dir),
        "data": {
            "source": "synthetic",
            "synthetic": {"train_images": 32, "validation_images": 10, "test_images": 10, "feature_dim": 8},
            "min_word_count": 1,
        },
        "model": {"backbone": "scan", "embed_dim": 8, "word_dim": 4},
        "training": {
            "max_steps": 7,
            "per_device_train_batch_size": 20,
            "learning_rate": 1e-3,
            "lr_decay_epochs": [0.375, 0.625],
            "lr_decay_factor": 0.5,
            "eval_strategy": "no",
            "save_strategy": "steps",
            "save_steps": 2,
            "save_total_limit": None,
            "load_best_model_at_end": False,
            "logging_steps": 1,
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
        },
    }


@pytest.fixture
def rates_used(monkeypatch) -> dict[str, dict[int, float]]:
    """{output folder: {step (0 first): the learning rate its training step ran at}}, for every run."""
    used: dict[str, dict[int, float]] = {}
    original = MatchingTrainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        rates = {group["lr"] for group in self.optimizer.param_groups}
        assert len(rates) == 1, rates
        used.setdefault(self.args.output_dir, {})[self.state.global_step] = rates.pop()
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(MatchingTrainer, "training_step", training_step)
    return used


def test_a_run_resumed_between_milestones_gets_the_rates_of_the_uninterrupted_run(tmp_path, rates_used):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_experiment(parse_experiment_config(tiny_run(whole)))
    # As if the run had been killed after writing its step-4 checkpoint.
    shutil.copytree(whole / f"checkpoint-{RESUMED_AT}", resumed / f"checkpoint-{RESUMED_AT}")
    run_experiment(parse_experiment_config(tiny_run(resumed)), resume_from_checkpoint=True)
    expected = {0: 1e-3, 1: 1e-3, 2: 1e-3, 3: 5e-4, 4: 5e-4, 5: 2.5e-4, 6: 2.5e-4}
    assert rates_used[str(whole)] == pytest.approx(expected, rel=1e-12)
    assert rates_used[str(resumed)] == pytest.approx(
        {step: rate for step, rate in expected.items() if step >= RESUMED_AT}, rel=1e-12
    )
    recorded = yaml.safe_load((resumed / "model" / "training_config.yaml").read_text())
    assert recorded["training"]["lr_decay_epochs"] == [0.375, 0.625]
    info = json.loads((resumed / "model" / "run_info.json").read_text())
    assert Path(info["sessions"][-1]["resumed_from"]).name == f"checkpoint-{RESUMED_AT}"
