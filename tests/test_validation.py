"""Bad data and bad config values are caught before training, each error naming where and what."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import yaml

from modeling_ccr.cli import main
from modeling_ccr.cli.run import parse_overrides
from modeling_ccr.data.schema import CorpusValidationError, corpus_features, validate_corpus
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.errors import ConfigError, UserError
from modeling_ccr.training.run_config import load_experiment_config, parse_experiment_config

DIM = 4


def row(image_id: str, n_regions: int = 2, **changes) -> dict:
    values = {
        "image_id": image_id,
        "features": np.ones((n_regions, DIM), dtype=np.float32),
        "boxes": np.tile(np.array([[0, 0, 10, 10]], dtype=np.float32), (n_regions, 1)),
        "image_size": [100, 80],
        "captions": ["a red dog", "a dog"],
        "phrases": [
            [
                {
                    "entity_id": "1",
                    "phrase": "a red dog",
                    "phrase_type": "animals",
                    "first_word": 0,
                    "num_words": 3,
                    "boxes": [[1.0, 2.0, 30.0, 40.0]],
                }
            ],
            [],
        ],
    }
    return values | changes


def split(*rows: dict) -> datasets.Dataset:
    features = corpus_features(DIM)
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)


def invalid(dataset: datasets.Dataset, *fragments: str) -> str:
    with pytest.raises(CorpusValidationError) as caught:
        validate_corpus(dataset, "train")
    message = str(caught.value)
    assert "split 'train'" in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_validation_errors_are_user_errors():
    assert issubclass(CorpusValidationError, UserError) and issubclass(CorpusValidationError, ValueError)


def test_a_row_without_regions_is_named_with_its_image_id():
    invalid(split(row("a"), row("b", n_regions=0)), "row 1 (image_id 'b')", "'features'", "0 regions")


def test_duplicate_image_ids_are_named_with_both_rows():
    invalid(split(row("a"), row("b"), row("a")), "row 2 (image_id 'a')", "'image_id'", "also at row 0")


def test_an_empty_image_id_is_refused():
    invalid(split(row("a"), row("")), "row 1", "empty image id")


def test_feature_magnitudes_no_extractor_produces_are_refused():
    huge = np.ones((2, DIM), dtype=np.float32)
    huge[1, 3] = 3e38
    invalid(split(row("a"), row("b", features=huge)), "row 1 (image_id 'b')", "3e+38 at region 1, dim 3")


def test_float16_features_at_the_top_of_their_range_are_still_refused_as_absurd():
    features = datasets.Features({**corpus_features(DIM, dtype="float16")})
    big = np.full((2, DIM), 60000, dtype=np.float16)
    rows = [row("a"), row("b", features=big)]
    dataset = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)
    invalid(dataset, "image_id 'b'", "6e+04")


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ([np.nan, 0, 10, 10], "non-finite coordinate"),
        ([20, 0, 10, 10], "is inverted"),
        ([0, 30, 10, 10], "is inverted"),
        ([0, 0, 500, 10], "far outside its image"),
        ([-60, 0, 10, 10], "far outside its image"),
    ],
)
def test_region_boxes_that_cannot_be_real_are_named(box, reason):
    boxes = np.array([[0, 0, 10, 10], box], dtype=np.float32)
    message = invalid(split(row("a"), row("b", boxes=boxes)), "row 1 (image_id 'b')", "'boxes'", reason)
    assert "region 1's box" in message


def test_a_box_overhanging_its_image_slightly_is_accepted():
    boxes = np.array([[-5, -5, 10, 10], [0, 0, 110, 90]], dtype=np.float32)
    validate_corpus(split(row("a", boxes=boxes)), "train")


@pytest.mark.parametrize(
    ("box", "reason"),
    [([1, 2, np.nan, 40], "non-finite"), ([30, 2, 1, 40], "inverted"), ([1, 2, 30, 4000], "far outside")],
)
def test_gold_boxes_that_cannot_be_scored_are_named_with_their_phrase(box, reason):
    bad = row("b")
    bad["phrases"][0][0]["boxes"] = [box]
    message = invalid(split(row("a"), bad), "row 1 (image_id 'b')", "'phrases'", "'a red dog'", reason)
    assert "attention metrics" in message


def test_a_training_run_on_bad_data_stops_before_training_with_one_line(tmp_path, capsys):
    corpus = build_synthetic_corpus(
        SyntheticCorpusConfig(seed=0, train_images=8, validation_images=4, test_images=4, feature_dim=8)
    )
    corpus["validation"] = corpus["validation"].map(
        lambda r, i: r | {"boxes": np.asarray(r["boxes"])[:, [2, 1, 0, 3]]} if i == 2 else r,
        with_indices=True,
    )
    corpus.save_to_disk(str(tmp_path / "corpus"))
    image_id = corpus["validation"][2]["image_id"]
    config = {
        "output_dir": str(tmp_path / "run"),
        "data": {"source": str(tmp_path / "corpus"), "min_word_count": 1},
        "model": {"backbone": "scan", "embed_dim": 8, "word_dim": 4},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ccr ")]
    assert len(errors) == 1 and "Traceback" not in err
    err = errors[0]
    assert f"split 'validation', column 'boxes', row 2 (image_id {image_id!r})" in err and "inverted" in err
    assert not (tmp_path / "run").exists(), "nothing trained"


# ------------------------------------------------------------------------------- config value types
def minimal(**training) -> dict:
    return {"output_dir": "out", "model": {"backbone": "scan"}, "training": training}


def test_set_reads_an_exponent_without_a_dot_as_a_float():
    assert parse_overrides(["training.learning_rate=1e-3"]) == {"training.learning_rate": 0.001}
    assert parse_overrides(["training.max_steps=100"]) == {"training.max_steps": 100}


def test_a_yaml_file_reads_an_exponent_without_a_dot_as_a_float(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "output_dir: out\nmodel: {backbone: scan, ccr_weight: 1e-1}\ntraining:\n  learning_rate: 2e-4\n"
    )
    config = load_experiment_config(path, {"training.max_grad_norm": parse_overrides(["x=5E0"])["x"]})
    assert config.training_set == {"learning_rate": 2e-4, "max_grad_norm": 5.0}
    assert (config.training.learning_rate, config.training.max_grad_norm) == (2e-4, 5.0)
    assert config.model.options["ccr_weight"] == 0.1


def test_a_number_in_quotes_becomes_the_float_its_key_expects():
    assert parse_experiment_config(minimal(learning_rate="1e-3")).training.learning_rate == 0.001


@pytest.mark.parametrize(
    ("training", "fragment"),
    [
        ({"learning_rate": "fast"}, "training.learning_rate must be float, found 'fast'"),
        ({"learning_rate": float("nan")}, "training.learning_rate must be float"),
        ({"max_steps": 1.5}, "training.max_steps must be int, found 1.5"),
        ({"max_steps": True}, "training.max_steps must be int"),
        ({"disable_tqdm": "yes"}, "training.disable_tqdm must be bool or null"),
        ({"lr_decay_factor": [0.1]}, "training.lr_decay_factor must be float"),
    ],
)
def test_a_training_value_of_the_wrong_type_is_refused_with_its_key(training, fragment):
    with pytest.raises(ConfigError, match=r"<dict>: " + fragment.replace("(", r"\(").replace(".", r"\.")):
        parse_experiment_config(minimal(**training))


def test_model_and_data_values_are_typed_too():
    with pytest.raises(ConfigError, match=r"model\.ccr_weight must be float, found 'strong'"):
        parse_experiment_config({"output_dir": "o", "model": {"backbone": "scan", "ccr_weight": "strong"}})
    with pytest.raises(ConfigError, match=r"data\.min_word_count must be int"):
        parse_experiment_config(
            {"output_dir": "o", "model": {"backbone": "scan"}, "data": {"min_word_count": "4"}}
        )
    with pytest.raises(ConfigError, match=r"data\.synthetic\.train_images must be int"):
        parse_experiment_config(
            {"output_dir": "o", "model": {"backbone": "scan"}, "data": {"synthetic": {"train_images": 2.5}}}
        )


def test_an_integral_float_is_accepted_where_an_int_is_expected():
    assert parse_experiment_config(minimal(max_steps=1e3)).training.max_steps == 1000


def test_a_wrong_type_on_the_command_line_is_one_line_with_the_key(capsys):
    assert main(["train", "demo", "--set", "training.learning_rate=fast"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ccr ")]
    assert len(errors) == 1 and "Traceback" not in err
    err = errors[0]
    assert "training.learning_rate must be float, found 'fast'" in err
