"""Image corpora: `ccr convert images`, the digit scenes as images, and a tower model trained and evaluated on them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("timm")
matplotlib = pytest.importorskip("matplotlib")

from photo_files import PHOTOS, write_photos  # noqa: E402

from modeling_ccr.cli import main  # noqa: E402
from modeling_ccr.data.collator import ImageCaptionCollator  # noqa: E402
from modeling_ccr.data.image_corpus import ImagePairs, ImageRows, tower_feature_split  # noqa: E402
from modeling_ccr.data.schema import CorpusValidationError, image_corpus_features, validate_corpus  # noqa: E402
from modeling_ccr.models import BACKBONES  # noqa: E402
from modeling_ccr.models.image_processing_matcher import decode_image  # noqa: E402
from modeling_ccr.text.tokenization import build_word_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """Real photos matplotlib ships (and crops of them), with a CSV of 3 captions each."""
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def photo_corpus(photos, tmp_path_factory) -> Path:
    folder, captions = photos
    out = tmp_path_factory.mktemp("corpus") / "photos"
    assert main(["convert", "images", str(folder), "--captions", str(captions), "--out", str(out)]) == 0
    return out


def test_convert_images_stores_each_file_unchanged_with_its_displayed_size(photos, photo_corpus):
    folder, _ = photos
    corpus = datasets.load_from_disk(str(photo_corpus))
    assert {split: len(corpus[split]) for split in corpus} == {"train": 3, "validation": 2, "test": 2}
    rows = ImageRows(corpus["train"])
    first = rows[0]
    assert first["image_id"] == "grace_hopper.jpg" and first["image_size"] == (512, 600)
    assert first["image"] == (folder / "grace_hopper.jpg").read_bytes()
    assert isinstance(corpus["train"].features["image"], datasets.Image)
    pairs = ImagePairs(corpus["validation"])
    assert len(pairs) == 6 and pairs[4]["caption"] == "part of a shiny blue package 1"


def test_convert_images_with_boxes_keeps_them_and_refuses_a_box_outside_the_image(photos, tmp_path):
    folder, captions = photos
    boxes = {name: [[0, 0, 40, 30], [5, 5, 20, 25]] for name in PHOTOS}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    argv = [
        "convert",
        "images",
        str(folder),
        "--captions",
        str(captions),
        "--boxes",
        str(tmp_path / "boxes.json"),
    ]
    assert main([*argv, "--out", str(tmp_path / "ok")]) == 0
    train = datasets.load_from_disk(str(tmp_path / "ok"))["train"].with_format("numpy", columns=["boxes"])
    np.testing.assert_array_equal(train[0]["boxes"], np.asarray(boxes["grace_hopper.jpg"], np.float32))
    boxes["present_small.png"] = [[0, 0, 5000, 10]]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    assert main([*argv, "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_convert_images_refuses_an_entry_outside_the_images_folder(photos, tmp_path):
    folder, _ = photos
    (tmp_path / "c.jsonl").write_text('{"image": "../captions.csv", "caption": "a file"}\n')
    assert (
        main(
            [
                "convert",
                "images",
                str(folder),
                "--captions",
                str(tmp_path / "c.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def png(pixels: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_an_image_corpus_row_without_an_image_or_with_zero_boxes_is_refused_naming_the_row():
    features = image_corpus_features(with_boxes=True)
    row = {"image_id": "a", "image": png(np.zeros((4, 4, 3), np.uint8)), "boxes": [[0, 0, 2, 2]],
           "image_size": [4, 4], "captions": ["a cat"]}  # fmt: skip
    validate_corpus(datasets.Dataset.from_list([row], features=features), "train")
    empty = datasets.Dataset.from_list([row, {**row, "image_id": "b", "boxes": []}], features=features)
    with pytest.raises(CorpusValidationError, match=r"row 1 \(image_id 'b'\).*0 boxes"):
        validate_corpus(empty, "train")
    missing = datasets.Dataset.from_list([{**row, "image": None}], features=features)
    with pytest.raises(CorpusValidationError, match="no image"):
        validate_corpus(missing, "train")


def test_an_undecodable_image_is_named_by_its_row_in_the_worker():
    from modeling_ccr.models.image_processing_matcher import ImageDecodeError, MatcherImageProcessor

    collate = ImageCaptionCollator(None, MatcherImageProcessor(size={"height": 8, "width": 8}))
    with pytest.raises(ImageDecodeError, match=r"image_index 7.*'broken'"):
        collate([{"image": b"not a png", "image_index": 7, "image_id": "broken"}])


def tiny_scan(tokenizer, **tower):
    config_class, model_class = BACKBONES["scan"]
    config = config_class(
        vocab_size=len(tokenizer), embed_dim=16, word_dim=8, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        vision_tower={"architecture": "test_efficientnet", "image_size": 64, **tower},
    )  # fmt: skip
    torch.manual_seed(0)
    return model_class(config)


@pytest.mark.slow
def test_a_tower_model_trains_on_photos_and_is_evaluated_through_the_gallery(photo_corpus, tmp_path):
    from transformers import TrainingArguments

    from modeling_ccr.training.trainer import MatchingTrainer

    corpus = datasets.load_from_disk(str(photo_corpus))
    tokenizer = build_word_tokenizer(ImagePairs(corpus["train"]).captions, 1)
    model = tiny_scan(tokenizer, grid=2, freeze_steps=2, learning_rate=1e-4, freeze_batchnorm=True)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=3, eval_strategy="no",
        save_strategy="no", report_to=[], disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=1, learning_rate=1e-3,
    )  # fmt: skip
    from modeling_ccr.training.text_encoders import text_encoder_optimizer

    optimizer = text_encoder_optimizer(model, args)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-4]
    stem = model.vision_tower.model.conv_stem.weight.detach().clone()
    trainer = MatchingTrainer(
        model=model, args=args, train_dataset=ImagePairs(corpus["train"]), processing_class=tokenizer,
        data_collator=ImageCaptionCollator.for_model(model, tokenizer), captions_per_image=3,
        optimizers=(optimizer, None),
    )  # fmt: skip
    trainer.train()
    assert not torch.equal(model.vision_tower.model.conv_stem.weight, stem)  # the tower trained after step 2
    metrics = trainer.evaluate(corpus["test"])
    assert metrics["eval_n_images"] == 2 and 0 <= metrics["eval_rsum"] <= 600


def test_the_tower_freezes_for_its_first_steps(photo_corpus, tmp_path):
    from transformers import TrainingArguments

    from modeling_ccr.training.trainer import MatchingTrainer

    corpus = datasets.load_from_disk(str(photo_corpus))
    tokenizer = build_word_tokenizer(ImagePairs(corpus["train"]).captions, 1)
    model = tiny_scan(tokenizer, grid=2, freeze_steps=3)
    stem = model.vision_tower.model.conv_stem.weight.detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=3, eval_strategy="no",
        save_strategy="no", report_to=[], disable_tqdm=True, remove_unused_columns=False, learning_rate=1e-2,
    )  # fmt: skip
    MatchingTrainer(
        model=model, args=args, train_dataset=ImagePairs(corpus["train"]), processing_class=tokenizer,
        data_collator=ImageCaptionCollator.for_model(model, tokenizer),
    ).train()  # fmt: skip
    assert torch.equal(model.vision_tower.model.conv_stem.weight, stem)
    assert not model.vision_tower.frozen  # released when training ends


@pytest.mark.slow
def test_digit_scenes_written_as_images_keep_their_boxes_and_phrases_and_give_attention_metrics(tmp_path):
    pytest.importorskip("sklearn")
    from modeling_ccr.evaluation.gallery import attention_metrics
    from modeling_ccr.vision.digit_scenes import DigitScenesConfig, save_digit_scenes

    config = DigitScenesConfig(train_images=4, validation_images=2, test_images=3, canvas_size=96)
    saved = save_digit_scenes(tmp_path / "scenes", config, as_images=True)
    assert (saved / "flickr30k_entities" / "test").is_dir()
    corpus = datasets.load_from_disk(str(saved))
    for split, dataset in corpus.items():
        validate_corpus(dataset, split)
    row = ImageRows(corpus["test"])[0]
    assert decode_image(row["image"]).size == (96, 96) and row["boxes"].shape == (8 + 16, 4)
    tokenizer = build_word_tokenizer(ImagePairs(corpus["train"]).captions, 1)
    model = tiny_scan(tokenizer, regions="boxes", image_size=96)
    features = tower_feature_split(model, corpus["test"], batch_size=2)
    np.testing.assert_allclose(np.asarray(features[0]["boxes"]), row["boxes"], atol=1e-4)
    assert np.asarray(features[0]["features"]).shape == (24, 256)
    result = attention_metrics(model, tokenizer, features)
    assert 0 <= result["attention_f1"] <= 1 and result["n_words"] > 0


def test_a_run_gets_pairs_collator_captions_and_feature_size_from_either_kind_of_split(photo_corpus):
    from modeling_ccr.data.collator import RegionCaptionCollator
    from modeling_ccr.data.image_corpus import (
        corpus_captions,
        split_feature_dim,
        training_collator,
        training_pairs,
    )

    images = datasets.load_from_disk(str(photo_corpus))["train"]
    tokenizer = build_word_tokenizer(corpus_captions(images), 1)
    tower = {"architecture": "test_efficientnet", "image_size": 64, "grid": 2}
    assert split_feature_dim(images, {"vision_tower": tower}) == 256
    with pytest.raises(ValueError, match="needs a vision_tower"):
        split_feature_dim(images, {})
    model = tiny_scan(tokenizer, grid=2)
    batch = training_collator(images, model, tokenizer)([training_pairs(images)[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    features = tower_feature_split(model, images)
    assert isinstance(training_collator(features, model, tokenizer), RegionCaptionCollator)
    assert split_feature_dim(features, {}) == 256 and corpus_captions(features) == corpus_captions(images)
