"""The region-feature corpus schema and `validate_corpus`: one bad input per test."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from modeling_ccr.data.schema import corpus_features, validate_corpus

DIM = 8


def _phrase(first: int, count: int, text: str = "a red dog") -> dict:
    return {
        "entity_id": "1",
        "phrase": text,
        "phrase_type": "animals",
        "first_word": first,
        "num_words": count,
        "boxes": [[1.0, 2.0, 30.0, 40.0]],
    }


def _row(image_id: str = "img-0", n_regions: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {
        "image_id": image_id,
        "features": rng.standard_normal((n_regions, DIM)).astype(np.float32),
        "boxes": np.tile(np.array([[0, 0, 10, 10]], dtype=np.float32), (n_regions, 1)),
        "image_size": [100, 80],
        "captions": ["a red dog on the grass .", "a red dog"],
        "phrases": [[_phrase(0, 3), _phrase(4, 2, text="the grass")], [_phrase(0, 3)]],
    }


def _dataset(rows: list[dict], features: datasets.Features | None = None) -> datasets.Dataset:
    features = features if features is not None else corpus_features(DIM)
    columns = {name: [row[name] for row in rows] for name in features if name in rows[0]}
    kept = datasets.Features({k: v for k, v in features.items() if k in columns})
    return datasets.Dataset.from_dict(columns, features=kept)


def _good_rows() -> list[dict]:
    return [_row("img-0", 3), _row("img-1", 5)]


def test_corpus_features_have_the_documented_columns_and_types():
    features = corpus_features(DIM, dtype="float16")
    assert list(features) == ["image_id", "features", "boxes", "image_size", "captions", "phrases"]
    assert features["features"] == datasets.Array2D(shape=(None, DIM), dtype="float16")
    assert features["boxes"] == datasets.Array2D(shape=(None, 4), dtype="float32")
    phrase = features["phrases"].feature.feature
    assert set(phrase) == {"entity_id", "phrase", "phrase_type", "first_word", "num_words", "boxes"}
    assert list(corpus_features(DIM, with_boxes=False, with_phrases=False)) == [
        "image_id",
        "features",
        "image_size",
        "captions",
    ]


def test_corpus_features_reject_unknown_dtype():
    with pytest.raises(ValueError, match="float64"):
        corpus_features(DIM, dtype="float64")


def test_rows_round_trip_through_the_schema(tmp_path):
    rows = _good_rows()
    dataset = _dataset(rows)
    dataset.save_to_disk(str(tmp_path / "corpus"))
    reloaded = datasets.load_from_disk(str(tmp_path / "corpus"))
    assert reloaded.features == corpus_features(DIM)
    numpy_rows = reloaded.with_format("numpy", columns=["features", "boxes"])
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(numpy_rows[i]["features"], row["features"])
        np.testing.assert_array_equal(numpy_rows[i]["boxes"], row["boxes"])
        assert reloaded[i]["captions"] == row["captions"]
        assert reloaded[i]["phrases"] == row["phrases"]
        assert reloaded[i]["image_size"] == row["image_size"]


def test_validate_corpus_accepts_a_good_corpus():
    validate_corpus(_dataset(_good_rows()), "train", expected_feature_dim=DIM, captions_per_image=2)


def test_validate_corpus_accepts_a_corpus_without_optional_columns():
    dataset = _dataset(_good_rows(), corpus_features(DIM, with_boxes=False, with_phrases=False))
    validate_corpus(dataset, "train", expected_feature_dim=DIM)


@pytest.mark.parametrize("column", ["image_id", "features", "captions"])
def test_validate_corpus_rejects_a_missing_required_column(column):
    dataset = _dataset(_good_rows()).remove_columns(column)
    with pytest.raises(ValueError, match=rf"split 'train' is missing required column\(s\) \['{column}'\]"):
        validate_corpus(dataset, "train")


def test_validate_corpus_rejects_a_feature_dim_mismatch():
    with pytest.raises(ValueError, match=r"split 'test', column 'features': feature_dim 8 .*expected 16"):
        validate_corpus(_dataset(_good_rows()), "test", expected_feature_dim=16)


def test_validate_corpus_rejects_a_feature_dim_mismatch_in_an_untyped_column():
    rows = _good_rows()
    rows[1]["features"] = np.zeros((2, DIM + 1), dtype=np.float32)
    features = datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "features": datasets.List(datasets.List(datasets.Value("float32"))),
            "captions": datasets.List(datasets.Value("string")),
        }
    )
    with pytest.raises(ValueError, match=r"row 1 \(image_id 'img-1'\): feature_dim 9, expected 8"):
        validate_corpus(_dataset(rows, features), "train", expected_feature_dim=DIM)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_corpus_rejects_non_finite_features(bad):
    rows = _good_rows()
    rows[1]["features"][2, 5] = bad
    with pytest.raises(
        ValueError, match=rf"row 1 \(image_id 'img-1'\): non-finite value {bad} at region 2, dim 5"
    ):
        validate_corpus(_dataset(rows), "validation")


def test_validate_corpus_rejects_an_empty_caption():
    rows = _good_rows()
    rows[1]["captions"][1] = "  "
    rows[1]["phrases"][1] = []
    with pytest.raises(
        ValueError, match=r"column 'captions', row 1 \(image_id 'img-1'\): caption 1 is empty"
    ):
        validate_corpus(_dataset(rows), "train")


def test_validate_corpus_rejects_a_wrong_caption_count():
    with pytest.raises(ValueError, match=r"row 0 \(image_id 'img-0'\): 2 captions, expected 5"):
        validate_corpus(_dataset(_good_rows()), "train", captions_per_image=5)


def test_validate_corpus_rejects_boxes_that_do_not_match_the_regions():
    rows = _good_rows()
    rows[1]["boxes"] = rows[1]["boxes"][:4]
    with pytest.raises(
        ValueError, match=r"column 'boxes', row 1 \(image_id 'img-1'\): 4 boxes but 5 feature regions"
    ):
        validate_corpus(_dataset(rows), "train")


def test_validate_corpus_rejects_phrase_lists_that_do_not_match_the_captions():
    rows = _good_rows()
    rows[0]["phrases"] = rows[0]["phrases"][:1]
    with pytest.raises(ValueError, match=r"column 'phrases', row 0 .*1 phrase lists but 2 captions"):
        validate_corpus(_dataset(rows), "train")


@pytest.mark.parametrize(("first", "count"), [(4, 3), (-1, 2), (0, 0), (0, 5)])
def test_validate_corpus_rejects_a_phrase_span_out_of_range(first, count):
    rows = _good_rows()
    rows[1]["phrases"][1] = [_phrase(first, count)]
    with pytest.raises(ValueError, match=rf"row 1 .*first_word={first}, num_words={count}, out of range"):
        validate_corpus(_dataset(rows), "train")


def test_validate_corpus_rejects_a_span_that_covers_other_words():
    rows = _good_rows()
    rows[0]["phrases"][0] = [_phrase(1, 2, text="the grass")]
    with pytest.raises(ValueError, match=r"phrase 'the grass' .*covers 'red dog'"):
        validate_corpus(_dataset(rows), "train")
