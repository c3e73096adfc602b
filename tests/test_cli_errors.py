"""User errors in the `ccr` command: one line naming the path or value and what was expected, exit code 2,
and the traceback only with `--debug`."""

import json

import pytest

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.cli import USER_ERROR_EXIT_CODE, main
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.errors import UserError
from modeling_ccr.text.tokenization import build_word_tokenizer


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    config = SyntheticCorpusConfig(train_images=4, validation_images=2, test_images=3, feature_dim=8)
    path = tmp_path_factory.mktemp("corpus")
    build_synthetic_corpus(config).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus_dir):
    import datasets

    captions = [c for row in datasets.load_from_disk(str(corpus_dir))["train"]["captions"] for c in row]
    tokenizer = build_word_tokenizer(captions, min_count=1)
    path = tmp_path_factory.mktemp("model")
    ScanModel(ScanConfig(feature_dim=8, embed_dim=4, vocab_size=len(tokenizer), word_dim=3)).save_pretrained(
        path
    )
    tokenizer.save_pretrained(path)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, *fragments):
    assert code == USER_ERROR_EXIT_CODE
    # Progress bars (model loading) may come before it; the error itself is one line, and the last.
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ccr ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    for fragment in fragments:
        assert str(fragment) in errors[0], err


def test_a_missing_model_folder_is_named(capsys, tmp_path):
    missing = tmp_path / "a" / "missing" / "folder"
    assert_one_line_error(*run(["evaluate", missing], capsys), missing, "no model folder")


def test_a_folder_without_model_files_is_named_with_what_it_lacks(capsys, tmp_path):
    assert_one_line_error(*run(["evaluate", tmp_path], capsys), tmp_path, "config.json")


def test_a_model_folder_with_an_unreadable_config_is_named(capsys, tmp_path, model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    (broken / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    assert_one_line_error(*run(["evaluate", broken], capsys), broken, "cannot be loaded")


def test_a_dataset_folder_that_is_not_a_saved_datasetdict_is_named(capsys, tmp_path, model_dir):
    not_a_dataset = tmp_path / "not_a_dataset"
    not_a_dataset.mkdir()
    (not_a_dataset / "notes.txt").write_text("hello")
    code, err = run(["evaluate", model_dir, "--dataset", not_a_dataset], capsys)
    assert_one_line_error(code, err, not_a_dataset, "save_to_disk")


def test_a_missing_split_names_the_splits_there_are(capsys, model_dir, corpus_dir):
    code, err = run(["evaluate", model_dir, "--dataset", corpus_dir, "--split", "nope"], capsys)
    assert_one_line_error(code, err, "'nope'", "test", "train")


def test_an_unknown_image_id_for_visualize_is_named(capsys, tmp_path, model_dir, corpus_dir):
    pytest.importorskip("matplotlib")
    argv = ["visualize", model_dir, "--dataset", corpus_dir, "--image-id", "no-such-image", "--word", "0"]
    code, err = run([*argv, "--out", tmp_path / "a.png"], capsys)
    assert_one_line_error(code, err, "'no-such-image'", "valid ids")


def test_an_unknown_config_name_lists_the_published_ones(capsys):
    assert_one_line_error(
        *run(["train", "scan_t2i_avg_f31k"], capsys), "scan_t2i_avg_f31k", "scan_t2i_avg_f30k"
    )


def test_a_missing_config_path_is_named(capsys, tmp_path):
    missing = tmp_path / "mine.yaml"
    assert_one_line_error(*run(["train", missing], capsys), missing, "not found")


def test_a_malformed_set_override_is_named(capsys):
    assert_one_line_error(*run(["train", "demo", "--set", "training.max_steps"], capsys), "KEY=VALUE")


def test_card_of_a_folder_that_is_not_a_model_is_an_error(capsys, tmp_path):
    assert_one_line_error(*run(["card", tmp_path], capsys), tmp_path)


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(UserError, match="no model folder"):
        main(["--debug", "evaluate", str(tmp_path / "missing")])


def test_configs_lists_every_published_config_on_one_line_each(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert "demo" in names and "scan_t2i_avg_f30k" in names and "sgr_coco" in names
    demo = lines[names.index("demo")]
    assert "SCAN t2i avg" in demo and "built-in synthetic corpus" in demo
    assert "corpus at data/f30k_precomp" in lines[names.index("scan_t2i_avg_f30k")]


def test_a_published_config_is_found_by_name(tmp_path):
    from modeling_ccr.resources import resolve_config

    assert resolve_config("scan_t2i_avg_f30k").name == "scan_t2i_avg_f30k.yaml"
    own = tmp_path / "scan_t2i_avg_f30k"  # a path that exists wins over a published name
    own.write_text(json.dumps({"seed": 1}))
    assert resolve_config(own) == own
