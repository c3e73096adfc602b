"""Pairs over one-row-per-image datasets, and the collator that pads them into model inputs."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from modeling_ccr.data.collator import RegionCaptionCollator, pad_regions, tokenize_captions
from modeling_ccr.data.pairs import ImageCaptionPairs, ImageFeatures, caption_table
from modeling_ccr.text.tokenization import build_word_tokenizer, split_words

FEATURE_DIM = 3


def make_dataset(n_regions=(2, 4, 1), n_captions=(2, 3, 1), dtype="float32") -> datasets.Dataset:
    """Row r has n_regions[r] regions whose features all equal r + 1, and captions "image r caption c"."""
    features = datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "features": datasets.Array2D((None, FEATURE_DIM), dtype),
            "captions": datasets.List(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image_id": [f"img{r}" for r in range(len(n_regions))],
            "features": [np.full((n, FEATURE_DIM), r + 1.0) for r, n in enumerate(n_regions)],
            "captions": [[f"image {r} caption {c}" for c in range(k)] for r, k in enumerate(n_captions)],
        },
        features=features,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(["image caption 0 1 2 3 a dog runs on grass ."] * 4, min_count=1)


# ---------------------------------------------------------------------------------------------- pairs


def test_pairs_cover_every_caption_exactly_once_with_its_image():
    dataset = make_dataset()
    pairs = ImageCaptionPairs(dataset)
    assert len(pairs) == 6
    seen = [
        (pairs[i]["image_index"], pairs[i]["caption_index"], pairs[i]["caption"]) for i in range(len(pairs))
    ]
    expected = [(r, c, f"image {r} caption {c}") for r, k in enumerate((2, 3, 1)) for c in range(k)]
    assert seen == expected
    for i in range(len(pairs)):
        item = pairs[i]
        assert np.all(item["features"] == item["image_index"] + 1.0)


def test_pair_features_are_float32_ndarrays_of_the_image_shape():
    item = ImageCaptionPairs(make_dataset())[3]
    assert isinstance(item["features"], np.ndarray)
    assert item["features"].dtype == np.float32
    assert item["features"].shape == (4, FEATURE_DIM)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_stored_features_of_any_float_dtype_come_back_float32(dtype):
    item = ImageCaptionPairs(make_dataset(dtype=dtype))[0]
    assert item["features"].dtype == np.float32
    np.testing.assert_array_equal(item["features"], np.ones((2, FEATURE_DIM), np.float32))


def test_images_without_captions_contribute_no_pairs():
    pairs = ImageCaptionPairs(make_dataset(n_captions=(1, 0, 2)))
    assert [pairs[i]["image_index"] for i in range(len(pairs))] == [0, 2, 2]


def test_pairs_follow_the_rows_of_a_selected_dataset():
    pairs = ImageCaptionPairs(make_dataset().select([2, 0]))
    assert [pairs[i]["caption"] for i in range(len(pairs))] == [
        "image 2 caption 0",
        "image 0 caption 0",
        "image 0 caption 1",
    ]
    assert [pairs[i]["image_index"] for i in range(len(pairs))] == [0, 1, 1]
    assert np.all(pairs[0]["features"] == 3.0)


def test_pairs_support_negative_indices_and_reject_out_of_range():
    pairs = ImageCaptionPairs(make_dataset())
    assert pairs[-1]["caption"] == "image 2 caption 0"
    with pytest.raises(IndexError):
        pairs[len(pairs)]


def test_pairs_reject_a_dataset_without_captions():
    with pytest.raises(ValueError, match="captions"):
        ImageCaptionPairs(make_dataset().remove_columns("captions"))


def test_caption_table_lists_captions_in_image_row_order():
    captions, caption_to_image = caption_table(make_dataset())
    assert captions == [f"image {r} caption {c}" for r, k in enumerate((2, 3, 1)) for c in range(k)]
    assert caption_to_image.dtype == np.int64
    np.testing.assert_array_equal(caption_to_image, [0, 0, 1, 1, 1, 2])


def test_image_features_iterates_images_once_each():
    images = ImageFeatures(make_dataset())
    assert len(images) == 3
    assert [images[i]["features"].shape[0] for i in range(3)] == [2, 4, 1]
    assert [images[i]["image_index"] for i in range(3)] == [0, 1, 2]


# ----------------------------------------------------------------------------------------- collator


def test_collator_pads_ragged_regions_with_zeros_and_masks_them(tokenizer):
    pairs = ImageCaptionPairs(make_dataset())
    batch = RegionCaptionCollator(tokenizer)([pairs[0], pairs[2], pairs[5]])  # images 0, 1, 2
    assert batch["region_features"].shape == (3, 4, FEATURE_DIM)
    assert batch["region_features"].dtype == torch.float32
    expected_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(batch["region_mask"], expected_mask)
    assert torch.all(batch["region_features"][~expected_mask] == 0)
    for b, image in enumerate([0, 1, 2]):
        assert torch.all(batch["region_features"][b][expected_mask[b]] == image + 1.0)
    assert torch.equal(batch["image_index"], torch.tensor([0, 1, 2]))
    assert batch["image_index"].dtype == torch.long


def test_collator_pads_captions_with_pad_id_and_masks_them(tokenizer):
    items = [
        {"features": np.ones((1, FEATURE_DIM)), "caption": "a dog", "image_index": 0},
        {"features": np.ones((1, FEATURE_DIM)), "caption": "a dog runs on grass .", "image_index": 1},
    ]
    batch = RegionCaptionCollator(tokenizer)(items)
    vocab = tokenizer.get_vocab()
    assert batch["input_ids"].tolist() == [
        [1, vocab["a"], vocab["dog"], 2, 0, 0, 0, 0],
        [1, *[vocab[w] for w in split_words("a dog runs on grass .")], 2],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def test_max_words_truncates_words_but_keeps_end(tokenizer):
    input_ids, attention_mask = tokenize_captions(tokenizer, ["a dog runs on grass .", "a"], max_words=2)
    vocab = tokenizer.get_vocab()
    assert input_ids.tolist() == [[1, vocab["a"], vocab["dog"], 2], [1, vocab["a"], 2, 0]]
    assert attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


@pytest.mark.parametrize("caption", ["", "   ", "\t\n"])
def test_empty_or_whitespace_caption_is_rejected_naming_its_image(tokenizer, caption):
    items = [
        {"features": np.ones((1, FEATURE_DIM)), "caption": "a dog", "image_index": 4},
        {"features": np.ones((1, FEATURE_DIM)), "caption": caption, "image_index": 7},
    ]
    with pytest.raises(ValueError, match="image_index 7"):
        RegionCaptionCollator(tokenizer)(items)


def test_feature_dims_differing_within_a_batch_are_rejected(tokenizer):
    items = [
        {"features": np.ones((2, FEATURE_DIM)), "caption": "a dog", "image_index": 0},
        {"features": np.ones((2, FEATURE_DIM + 1)), "caption": "a dog", "image_index": 9},
    ]
    with pytest.raises(ValueError, match=r"feature_dim differs.*image_index 9"):
        RegionCaptionCollator(tokenizer)(items)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_rejected_naming_the_image(bad_value):
    features = np.ones((2, FEATURE_DIM), np.float32)
    features[1, 0] = bad_value
    with pytest.raises(ValueError, match=r"image_index 5.*NaN or Inf"):
        pad_regions([np.ones((1, FEATURE_DIM)), features], image_indices=[3, 5])


def test_image_without_regions_is_rejected():
    with pytest.raises(ValueError, match="n_regions >= 1"):
        pad_regions([np.zeros((0, FEATURE_DIM))])


def test_pad_regions_accepts_tensors_and_float16():
    features, mask = pad_regions([torch.ones(2, FEATURE_DIM, dtype=torch.float16), np.ones((3, FEATURE_DIM))])
    assert features.dtype == torch.float32
    assert features.shape == (2, 3, FEATURE_DIM)
    assert mask.tolist() == [[True, True, False], [True, True, True]]


def test_collator_works_inside_a_dataloader(tokenizer):
    loader = torch.utils.data.DataLoader(
        ImageCaptionPairs(make_dataset()), batch_size=4, collate_fn=RegionCaptionCollator(tokenizer)
    )
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 2]
    assert torch.cat([b["image_index"] for b in batches]).tolist() == [0, 0, 1, 1, 1, 2]
