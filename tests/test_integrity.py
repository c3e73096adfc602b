"""Integrity of artefacts: corrupt files give one line naming the file; results name their weights'
sha256; changed weights are said, never silently evaluated over the training-time results or pushed."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_ccr.artifacts.integrity import safetensors_problem, sha256_file
from modeling_ccr.artifacts.loading import load_matcher
from modeling_ccr.cli import main
from modeling_ccr.errors import ModelLoadError
from modeling_ccr.hub.push import PushError, select_model_files
from modeling_ccr.training.experiment import (
    ConfigError,
    assemble_ensemble,
    parse_experiment_config,
    run_experiment,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("integrity")
    config = {
        "seed": 4,
        "output_dir": str(tmp_path / "run"),
        "data": {
            "source": "synthetic",
            "synthetic": {"train_images": 24, "validation_images": 8, "test_images": 8, "feature_dim": 8},
            "min_word_count": 1,
        },
        "model": {"backbone": "scan", "embed_dim": 8, "word_dim": 4},
        "training": {
            "max_steps": 2,
            "per_device_train_batch_size": 8,
            "eval_strategy": "no",
            "save_strategy": "no",
            "load_best_model_at_end": False,
            "disable_tqdm": True,
        },
    }
    return run_experiment(parse_experiment_config(config))


@pytest.fixture
def copy(model_dir, tmp_path):
    return shutil.copytree(model_dir, tmp_path / "model")


def one_line_error(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ccr ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_run_records_the_sha256_of_its_weights_with_its_results(model_dir):
    sha = sha256_file(model_dir / "model.safetensors")
    assert json.loads((model_dir / "run_info.json").read_text())["weights"]["sha256"] == sha
    record = json.loads((model_dir / "eval_results_test.json").read_text())
    assert record["weights"] == {
        str(model_dir): {"sha256": sha, "bytes": (model_dir / "model.safetensors").stat().st_size}
    }


def test_a_truncated_weights_file_is_named_with_what_is_wrong(copy, capsys):
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    err = one_line_error(["evaluate", copy], capsys)
    assert f"{weights} cannot be loaded: it is truncated" in err


def test_a_weights_file_cut_inside_its_header_is_named(copy):
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(ModelLoadError, match=r"model.safetensors cannot be loaded: its header claims"):
        load_matcher(copy)


def test_an_invalid_config_json_is_named_with_line_and_column(copy):
    (copy / "config.json").write_text('{"model_type": "xmatch_scan",\n  "embed_dim": }')
    with pytest.raises(
        ModelLoadError, match=r"config.json cannot be loaded: not valid JSON .* line 2, column 16"
    ):
        load_matcher(copy)


def test_a_config_json_without_model_type_is_named(copy):
    (copy / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"config.json cannot be loaded: it has no model_type"):
        load_matcher(copy)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_deleted_tokenizer_file_is_named(copy, name):
    (copy / name).unlink()
    with pytest.raises(ModelLoadError, match=f"{name} is missing"):
        load_matcher(copy)


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00garbage", b'{"model": ', b"[1, 2]"])
def test_a_garbage_tokenizer_file_is_named(copy, garbage):
    (copy / "tokenizer.json").write_bytes(garbage)
    with pytest.raises(ModelLoadError, match=r"tokenizer.json cannot be loaded"):
        load_matcher(copy)


def overwrite_with_random_weights(folder) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    save_file(
        {k: torch.randn(v.shape, generator=generator) for k, v in weights.items()},
        str(folder / "model.safetensors"),
    )


def test_changed_weights_are_said_and_never_overwrite_the_training_results(copy, capsys):
    before = (copy / "eval_results_test.json").read_text()
    overwrite_with_random_weights(copy)
    err = one_line_error(["evaluate", copy], capsys)
    assert "holds results measured with other weights" in err and "--output" in err
    assert (copy / "eval_results_test.json").read_text() == before
    output = copy.parent / "eval_results_changed.json"
    assert main(["evaluate", str(copy), "--output", str(output)]) == 0
    assert "has changed since training" in capsys.readouterr().err
    record = json.loads(output.read_text())
    assert record["weights"][str(copy)]["sha256"] == sha256_file(copy / "model.safetensors")


def test_evaluating_unchanged_weights_again_replaces_their_results(copy, capsys):
    assert main(["evaluate", str(copy)]) == 0
    assert "has changed" not in capsys.readouterr().err


def test_push_refuses_truncated_weights(copy):
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(PushError, match=r"refusing to push .*model.safetensors: it is truncated"):
        select_model_files(copy)


def test_push_refuses_weights_changed_since_training(copy):
    overwrite_with_random_weights(copy)
    with pytest.raises(PushError, match=r"has changed since training"):
        select_model_files(copy)


def test_push_refuses_results_measured_with_other_weights(copy):
    record = json.loads((copy / "eval_results_test.json").read_text())
    record["weights"] = {record["models"][0]: {"sha256": "0" * 64, "bytes": 1}}
    (copy / "eval_results_test.json").write_text(json.dumps(record))
    with pytest.raises(PushError, match=r"eval_results_test.json was measured with other weights"):
        select_model_files(copy)


def test_an_ensemble_of_the_same_model_twice_is_refused(model_dir, copy, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"hold the same weights"):
        assemble_ensemble([model_dir, copy], tmp_path / "ensemble")
    err = one_line_error(["ensemble", model_dir, model_dir, "--output", tmp_path / "ensemble"], capsys)
    assert "hold the same weights" in err
    err = one_line_error(["evaluate", model_dir, model_dir], capsys)
    assert "the same model is listed twice" in err


def test_the_safetensors_check_accepts_every_weights_file_it_wrote(model_dir):
    assert safetensors_problem(model_dir / "model.safetensors") is None


@pytest.mark.parametrize("name", ["extra.py", "picture.png", "vocab.json"])
def test_push_refuses_a_link_to_a_file_outside_the_folder(copy, tmp_path, name):
    secret = tmp_path / "secret.txt"
    secret.write_text("a private key")
    (copy / name).unlink(missing_ok=True)
    (copy / name).symlink_to(secret)
    with pytest.raises(
        PushError,
        match=rf"refusing to push .*{re.escape(name)}: expected a regular file, found a symbolic link",
    ):
        select_model_files(copy)
