"""`ccr evaluate` scores a folder only when its tokenizer, config and weights belong together, and never
writes over the results of another model."""

from __future__ import annotations

import json

import pytest

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.artifacts.integrity import WeightsIntegrityError
from modeling_ccr.artifacts.loading import FolderMismatchError
from modeling_ccr.artifacts.records import tokenizer_record
from modeling_ccr.cli import USER_ERROR_EXIT_CODE, main
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.evaluation.folder import FolderEvaluation, evaluate_folders, write_evaluation
from modeling_ccr.evaluation.gallery import evaluate_matchers
from modeling_ccr.text.tokenization import build_word_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus")
    config = SyntheticCorpusConfig(train_images=6, validation_images=2, test_images=6, feature_dim=8)
    build_synthetic_corpus(config).save_to_disk(str(path))
    return path


def captions_of(corpus_path) -> list[str]:
    import datasets

    return [c for row in datasets.load_from_disk(str(corpus_path))["train"]["captions"] for c in row]


def save_folder(path, tokenizer, **config):
    options = {"feature_dim": 8, "embed_dim": 4, "word_dim": 3, "vocab_size": len(tokenizer), **config}
    ScanModel(ScanConfig(**options)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def same_size_other_words(tokenizer):
    """A tokenizer of as many tokens as `tokenizer`, over other words (another run's vocabulary)."""
    words = [f"word{i}" for i in range(len(tokenizer) - 4)]  # 4 special tokens
    other = build_word_tokenizer([" ".join(words)], min_count=1)
    assert len(other) == len(tokenizer) and other.get_vocab() != tokenizer.get_vocab()
    return other


def one_line_error(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ccr ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_evaluate_folders_returns_the_metrics_of_the_gallery_scoring(corpus, tmp_path):
    tokenizer = build_word_tokenizer(captions_of(corpus), min_count=1)
    folder = save_folder(tmp_path / "model", tokenizer)
    result = evaluate_folders([folder], dataset=corpus, split="test")
    assert isinstance(result, FolderEvaluation) and result.models == [str(folder)]
    from modeling_ccr.artifacts.loading import load_matcher
    from modeling_ccr.data.corpora import load_evaluation_split

    model, loaded = load_matcher(folder)
    split, _ = load_evaluation_split(folder, str(corpus), "test")
    assert result.metrics == evaluate_matchers([model], [loaded], split, "full", 5)
    output = write_evaluation(result)
    assert output == folder / "eval_results_test.json"
    record = json.loads(output.read_text())
    assert record["tokenizers"] == {str(folder): tokenizer_record(folder)}


def test_a_tokenizer_of_another_size_is_refused_naming_tokenizer_and_config(corpus, tmp_path, capsys):
    tokenizer = build_word_tokenizer(captions_of(corpus), min_count=1)
    folder = save_folder(tmp_path / "model", tokenizer)
    build_word_tokenizer(
        ["an entirely different and longer vocabulary of words"], min_count=1
    ).save_pretrained(folder)
    err = one_line_error(["evaluate", folder, "--dataset", corpus], capsys)
    assert "tokenizer.json and config.json belong to different models" in err
    assert f"vocab_size of {len(tokenizer)}" in err
    assert not (folder / "eval_results_test.json").exists()


def test_a_tokenizer_swapped_since_training_is_refused_naming_run_info(corpus, tmp_path, capsys):
    tokenizer = build_word_tokenizer(captions_of(corpus), min_count=1)
    folder = save_folder(tmp_path / "model", tokenizer)
    (folder / "run_info.json").write_text(json.dumps({"tokenizer": tokenizer_record(folder)}))
    # Same size, other words: only the record made at save time tells it apart.
    same_size_other_words(tokenizer).save_pretrained(folder)
    err = one_line_error(["evaluate", folder, "--dataset", corpus], capsys)
    assert f"{folder / 'tokenizer'}" in err and "is not the tokenizer this model was trained with" in err
    assert "run_info.json" in err


def test_special_token_ids_that_differ_from_the_config_are_refused(corpus, tmp_path):
    tokenizer = build_word_tokenizer(captions_of(corpus), min_count=1)
    folder = save_folder(tmp_path / "model", tokenizer, pad_token_id=3)
    with pytest.raises(FolderMismatchError, match=r"pad_token_id is 3 in config\.json, 0 in the tokenizer"):
        evaluate_folders([folder], dataset=corpus)


def test_results_of_another_tokenizer_are_never_overwritten(corpus, tmp_path, capsys):
    tokenizer = build_word_tokenizer(captions_of(corpus), min_count=1)
    folder = save_folder(tmp_path / "model", tokenizer)  # no run_info.json: nothing recorded at save time
    assert main(["evaluate", str(folder), "--dataset", str(corpus)]) == 0
    first = (folder / "eval_results_test.json").read_text()
    same_size_other_words(tokenizer).save_pretrained(folder)
    err = one_line_error(["evaluate", folder, "--dataset", corpus], capsys)
    assert "holds results measured with another tokenizer" in err and "tokenizer.json" in err
    assert (folder / "eval_results_test.json").read_text() == first
    result = evaluate_folders([folder], dataset=corpus)
    with pytest.raises(WeightsIntegrityError):
        write_evaluation(result)
    assert write_evaluation(result, tmp_path / "elsewhere.json").is_file()
