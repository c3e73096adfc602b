"""Training pairs read from a streamed corpus (`datasets.IterableDataset`) are the map-style pairs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from modeling_ccr.data.pairs import ImageCaptionPairs
from modeling_ccr.data.streaming import (
    StreamingCorpusError,
    StreamingImageCaptionPairs,
    load_streaming_corpus,
)
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus

DIM = 4


def make_split(
    n_images: int = 60, captions: int = 5, dtype: str = "float16", seed: int = 0
) -> datasets.Dataset:
    """Images with 1 to 3 regions of distinct random features and `captions` captions each."""
    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "features": datasets.Array2D((None, DIM), dtype),
            "captions": datasets.List(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image_id": [f"im{i}" for i in range(n_images)],
            "features": [rng.standard_normal((int(rng.integers(1, 4)), DIM)) for _ in range(n_images)],
            "captions": [[f"image {i} caption {c}" for c in range(captions)] for i in range(n_images)],
        },
        features=features,
    )


def write_parquet(splits: dict[str, datasets.Dataset], folder: Path, shards: int = 4) -> Path:
    """Each split as `shards` Parquet files named `{split}-0000k-of-0000n.parquet` (the Hub's layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        for k in range(shards):
            split.shard(shards, k, contiguous=True).to_parquet(
                str(folder / f"{name}-{k:05d}-of-{shards:05d}.parquet")
            )
    return folder


def pair_keys(items) -> list[tuple]:
    return sorted(
        (item["image_index"], item["caption_index"], item["caption"], np.asarray(item["features"]).tobytes())
        for item in items
    )


@pytest.fixture(scope="module")
def split() -> datasets.Dataset:
    return make_split()


@pytest.fixture(scope="module")
def parquet_source(split, tmp_path_factory) -> Path:
    return write_parquet({"train": split, "validation": make_split(8, seed=1)}, tmp_path_factory.mktemp("pq"))


@pytest.fixture(scope="module")
def streamed(parquet_source) -> datasets.IterableDataset:
    return load_streaming_corpus(parquet_source)[0]


def test_an_epoch_of_streamed_pairs_is_exactly_the_map_style_pairs(split, streamed):
    pairs = StreamingImageCaptionPairs(streamed, seed=0, shuffle_buffer=16)
    reference = ImageCaptionPairs(split)
    assert len(pairs) == len(reference) == 300
    items = list(pairs)
    assert len(items) == 300
    assert pair_keys(items) == pair_keys(reference[i] for i in range(len(reference)))
    assert all(item["features"].dtype == np.float32 for item in items)


def test_a_save_to_disk_corpus_streams_the_same_pairs(split, tmp_path):
    datasets.DatasetDict({"train": split, "validation": make_split(8, seed=1)}).save_to_disk(
        str(tmp_path / "c")
    )
    train, others = load_streaming_corpus(tmp_path / "c")
    assert list(others) == ["validation"]
    reference = ImageCaptionPairs(split)
    streamed_items = list(StreamingImageCaptionPairs(train, seed=3, shuffle_buffer=8))
    assert pair_keys(streamed_items) == pair_keys(reference[i] for i in range(len(reference)))


def test_the_order_is_seeded_and_changes_with_the_epoch(streamed):
    first = [(i["image_index"], i["caption_index"]) for i in StreamingImageCaptionPairs(streamed, seed=5)]
    again = [(i["image_index"], i["caption_index"]) for i in StreamingImageCaptionPairs(streamed, seed=5)]
    assert first == again
    pairs = StreamingImageCaptionPairs(streamed, seed=5)
    pairs.set_epoch(1)
    next_epoch = [(i["image_index"], i["caption_index"]) for i in pairs]
    assert next_epoch != first and sorted(next_epoch) == sorted(first)
    other_seed = [
        (i["image_index"], i["caption_index"]) for i in StreamingImageCaptionPairs(streamed, seed=6)
    ]
    assert other_seed != first


def test_the_captions_of_an_image_are_spread_over_the_window_not_side_by_side(streamed):
    def adjacent_same_image(shuffle_buffer: int) -> float:
        rows = [
            i["image_index"]
            for i in StreamingImageCaptionPairs(streamed, seed=0, shuffle_buffer=shuffle_buffer)
        ]
        return float(np.mean([a == b for a, b in itertools.pairwise(rows)]))

    assert adjacent_same_image(1) == pytest.approx(240 / 299)  # one image at a time: 4 of its 5 steps repeat
    assert adjacent_same_image(32) < 0.1


def test_dataloader_workers_share_the_shards_and_yield_every_pair_once(split, streamed):
    pairs = StreamingImageCaptionPairs(streamed, seed=0, shuffle_buffer=8)
    loader = torch.utils.data.DataLoader(pairs, batch_size=None, num_workers=2)
    reference = ImageCaptionPairs(split)
    assert pair_keys(loader) == pair_keys(reference[i] for i in range(len(reference)))


def test_the_trainers_loader_has_a_length_and_sets_the_epoch_of_the_pairs(streamed):
    """The Trainer iterates an accelerate-prepared DataLoader: its length gives the epochs (no max_steps),
    and its set_epoch, called before each epoch, must reach the pairs to give each epoch its own order."""
    import accelerate

    pairs = StreamingImageCaptionPairs(streamed, seed=0)
    rows_only = torch.utils.data.DataLoader(
        pairs, batch_size=16, collate_fn=lambda items: torch.tensor([item["image_index"] for item in items])
    )
    loader = accelerate.Accelerator(cpu=True).prepare(rows_only)
    assert len(loader) == 300 // 16 + 1
    first = torch.cat(list(loader)).tolist()
    loader.set_epoch(1)
    second = torch.cat(list(loader)).tolist()
    assert second != first and sorted(second) == sorted(first)


def test_the_evaluation_splits_of_a_parquet_source_are_map_style(parquet_source):
    _, others = load_streaming_corpus(parquet_source)
    assert isinstance(others["validation"], datasets.Dataset) and len(others["validation"]) == 8
    assert others["validation"].features["features"] == datasets.Array2D((None, DIM), "float16")


# ------------------------------------------------------------------------------------------- bad input


def stream_of(split: datasets.Dataset, tmp_path: Path) -> datasets.IterableDataset:
    return load_streaming_corpus(write_parquet({"train": split}, tmp_path / "bad", shards=2))[0]


def test_a_repeated_image_id_is_an_error_naming_both_rows(tmp_path):
    split = make_split(6)
    ids = list(split["image_id"])
    ids[4] = ids[1]
    split = split.remove_columns("image_id").add_column("image_id", ids)
    with pytest.raises(StreamingCorpusError, match=r"row 4 \(image_id 'im1'\).*repeated, first at row 1"):
        StreamingImageCaptionPairs(stream_of(split, tmp_path))


def test_a_wrong_caption_count_and_an_empty_caption_are_errors_naming_the_row(tmp_path):
    with pytest.raises(StreamingCorpusError, match=r"row 0 \(image_id 'im0'\).*4 captions, expected 5"):
        StreamingImageCaptionPairs(stream_of(make_split(6, captions=4), tmp_path / "a"), captions_per_image=5)
    split = make_split(6)
    captions = [list(c) for c in split["captions"]]
    captions[3][2] = "  "
    split = split.remove_columns("captions").add_column(
        "captions", captions, feature=datasets.List(datasets.Value("string"))
    )
    with pytest.raises(StreamingCorpusError, match=r"row 3 \(image_id 'im3'\).*empty caption 2"):
        StreamingImageCaptionPairs(stream_of(split, tmp_path / "b"))


def test_a_non_finite_feature_met_while_streaming_stops_naming_the_row_and_image(tmp_path):
    split = make_split(6, dtype="float32")
    features = [np.asarray(f) for f in split.with_format("numpy")["features"]]
    features[4][0, 1] = np.nan
    split = split.remove_columns("features").add_column(
        "features", [f.tolist() for f in features], feature=datasets.Array2D((None, DIM), "float32")
    )
    pairs = StreamingImageCaptionPairs(stream_of(split, tmp_path))
    with pytest.raises(StreamingCorpusError, match=r"row 4 \(image_id 'im4'\).*NaN"):
        list(pairs)


def test_a_folder_without_train_files_is_an_error_naming_the_splits_found(tmp_path):
    write_parquet({"validation": make_split(4)}, tmp_path / "only_val", shards=1)
    with pytest.raises(StreamingCorpusError, match=r"no train files.*validation"):
        load_streaming_corpus(tmp_path / "only_val")


# ------------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_a_tiny_streaming_run_trains_and_its_loss_falls(tmp_path):
    from modeling_ccr.cli import main

    corpus = build_synthetic_corpus(
        SyntheticCorpusConfig(train_images=48, validation_images=8, test_images=8, feature_dim=8)
    )
    source = write_parquet(dict(corpus), tmp_path / "parquet", shards=2)
    overrides = [
        f"data.source={source}",
        "data.streaming=true",
        "data.shuffle_buffer=32",
        f"output_dir={tmp_path / 'run'}",
        "model.feature_dim=8",
        "model.embed_dim=32",
        "model.word_dim=16",
        "model.max_violation=false",
        "data.min_word_count=1",
        "training.num_train_epochs=6",
        "training.per_device_train_batch_size=16",
        "training.learning_rate=0.002",
        "training.logging_steps=5",
        "training.lr_decay_epochs=null",
        "training.disable_tqdm=true",
    ]
    assert main(["train", "scan_t2i_avg_f30k", *[a for o in overrides for a in ("--set", o)]]) == 0
    run_info = json.loads((tmp_path / "run" / "model" / "run_info.json").read_text())
    losses = [entry["loss"] for entry in run_info["log_history"] if "loss" in entry]
    steps_per_epoch = 48 * 5 // 16
    assert run_info["sessions"][-1]["end_step"] == 6 * steps_per_epoch  # epochs from len(): no max_steps
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses


def test_streaming_the_built_in_synthetic_corpus_is_a_config_error():
    from modeling_ccr.training.experiment import DATA_KEYS, ConfigError, streaming_train_pairs

    with pytest.raises(ConfigError, match=r"data\.streaming needs data\.source to be a folder"):
        streaming_train_pairs({**DATA_KEYS, "streaming": True}, seed=0, where="run.yaml")
