"""Run configurations that would do nothing, or read ambiguously, are refused before any training."""

import pytest

from modeling_ccr.training.experiment import (
    ConfigError,
    load_experiment_config,
    parse_experiment_config,
    run_experiment,
)

TINY = {
    "seed": 0,
    "data": {
        "min_word_count": 1,
        "synthetic": {"train_images": 16, "validation_images": 8, "test_images": 8},
    },
    "model": {"backbone": "scan", "embed_dim": 16, "word_dim": 8},
    "training": {"num_train_epochs": 1, "per_device_train_batch_size": 4},
}


def tiny(tmp_path, **training):
    raw = {**TINY, "output_dir": str(tmp_path / "run"), "training": {**TINY["training"], **training}}
    return parse_experiment_config(raw, "tiny.yaml")


def test_a_key_written_twice_in_yaml_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: a\nmodel:\n  backbone: scan\n  embed_dim: 16\n  embed_dim: 32\n")
    with pytest.raises(ConfigError, match=r"run\.yaml.*'embed_dim' written twice \(lines 4 and 5\)"):
        load_experiment_config(path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("per_device_train_batch_size", 0),
        ("per_device_train_batch_size", -4),
        ("learning_rate", -1e-4),
        ("num_train_epochs", 0),
        ("gradient_accumulation_steps", 0),
    ],
)
def test_values_that_cannot_train_are_refused_naming_the_field(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"tiny\.yaml: training\.{key} must be .*found {value}"):
        tiny(tmp_path, **{key: value})


def test_zero_epochs_are_allowed_when_max_steps_decides(tmp_path):
    assert tiny(tmp_path, num_train_epochs=0, max_steps=3).training.max_steps == 3


def test_a_training_split_smaller_than_one_batch_is_refused_and_saves_nothing(tmp_path):
    config = tiny(tmp_path, per_device_train_batch_size=512)
    with pytest.raises(ConfigError, match=r"fewer than one batch of 512.*zero steps"):
        run_experiment(config)
    assert not (tmp_path / "run" / "model").exists()
