"""Feature rows read through the dataset's Arrow buffers equal the `datasets` numpy formatter's rows."""

from __future__ import annotations

import pickle

import datasets
import numpy as np
import pytest
import torch

from modeling_ccr.data.pairs import ArrowFeatureRows, ImageCaptionPairs, ImageFeatures

DIM = 5


def make_corpus(n_images: int = 23, dtype: str = "float32", seed: int = 0) -> datasets.Dataset:
    """Rows of 1 to 4 regions of random features (distinct per row), 1 to 3 captions each."""
    rng = np.random.default_rng(seed)
    regions = rng.integers(1, 5, size=n_images)
    features = datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "features": datasets.Array2D((None, DIM), dtype),
            "captions": datasets.List(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image_id": [f"img{i}" for i in range(n_images)],
            "features": [rng.standard_normal((n, DIM)) for n in regions],
            "captions": [[f"image {i} caption {c}" for c in range(1 + i % 3)] for i in range(n_images)],
        },
        features=features,
    )


def formatter_rows(dataset: datasets.Dataset) -> list[np.ndarray]:
    """The reference: each row through the datasets numpy formatter, upcast to float32."""
    numpy_view = dataset.with_format("numpy", columns=["features"])
    return [np.asarray(numpy_view[i]["features"], dtype=np.float32) for i in range(len(dataset))]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> datasets.Dataset:
    """A memory-mapped corpus over 3 Arrow files with small record batches (many chunks)."""
    path = tmp_path_factory.mktemp("corpus")
    make_corpus(dtype="float16").save_to_disk(str(path), num_shards=3)
    return datasets.load_from_disk(str(path))


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_arrow_rows_equal_the_numpy_formatter_rows_in_every_stored_dtype(dtype):
    corpus = make_corpus(dtype=dtype)
    images = ImageFeatures(corpus)
    for i, expected in enumerate(formatter_rows(corpus)):
        item = images[i]
        assert item["features"].dtype == np.float32
        np.testing.assert_array_equal(item["features"], expected)


def test_arrow_rows_of_a_memory_mapped_corpus_over_several_files_equal_the_formatter_rows(saved):
    assert len(saved.data.column("features").chunks) >= 3
    pairs = ImageCaptionPairs(saved)
    expected = formatter_rows(saved)
    for i in range(len(pairs)):
        item = pairs[i]
        np.testing.assert_array_equal(item["features"], expected[item["image_index"]])


@pytest.mark.parametrize(
    "subset",
    [
        lambda d: d.select([7, 2, 19, 2]),
        lambda d: d.shuffle(seed=3),
        lambda d: d.select(range(5, 17)),  # contiguous: a sliced table, no indices mapping
        lambda d: d.shuffle(seed=1).select(range(3, 9)),
    ],
    ids=["select", "shuffle", "contiguous-select", "shuffle-then-slice"],
)
def test_arrow_rows_follow_the_rows_of_a_selected_or_shuffled_corpus(saved, subset):
    dataset = subset(saved)
    rows = ArrowFeatureRows(dataset)
    for i, expected in enumerate(formatter_rows(dataset)):
        np.testing.assert_array_equal(rows[i].astype(np.float32), expected)


def test_a_row_is_a_view_of_the_arrow_buffer_in_the_stored_dtype_and_items_are_writable_copies(saved):
    view = ArrowFeatureRows(saved)[4]
    assert view.dtype == np.float16
    assert not view.flags.owndata and not view.flags.writeable
    features = ImageFeatures(saved)[4]["features"]
    assert features.flags.writeable and not np.shares_memory(features, view)
    features[:] = 0  # the item belongs to its caller: the corpus is untouched
    assert np.any(ArrowFeatureRows(saved)[4] != 0)


def test_pickled_pairs_carry_no_feature_values_after_reads(saved):
    """DataLoader workers receive the pairs pickled: the views must be rebuilt there, not copied over."""
    pairs = ImageCaptionPairs(saved)
    before = len(pickle.dumps(pairs))
    for i in range(len(pairs)):
        pairs[i]
    assert len(pickle.dumps(pairs)) == before
    clone = pickle.loads(pickle.dumps(pairs))
    np.testing.assert_array_equal(clone[5]["features"], pairs[5]["features"])


def test_dataloader_workers_read_the_same_items_as_the_main_process(saved):
    pairs = ImageCaptionPairs(saved)
    loader = torch.utils.data.DataLoader(pairs, batch_size=None, num_workers=2)
    for i, item in enumerate(loader):
        np.testing.assert_array_equal(np.asarray(item["features"]), pairs[i]["features"])
    assert i == len(pairs) - 1


def test_a_row_whose_regions_differ_in_length_is_an_error_naming_the_row():
    features = datasets.Features({"features": datasets.List(datasets.List(datasets.Value("float32")))})
    corpus = datasets.Dataset.from_dict({"features": [[[1.0, 2.0]], [[1.0, 2.0], [3.0]]]}, features=features)
    images = ImageFeatures(corpus)
    np.testing.assert_array_equal(images[0]["features"], [[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"image row 1 must be \(n_regions, feature_dim\).*\[1, 2\]"):
        images[1]


def test_a_null_features_row_is_an_error_naming_the_row():
    features = datasets.Features({"features": datasets.Array2D((None, 2), "float32")})
    corpus = datasets.Dataset.from_dict({"features": [np.ones((1, 2)), None]}, features=features)
    with pytest.raises(ValueError, match=r"image row 1 .* null"):
        ImageFeatures(corpus)[1]
