"""`ccr convert images` + `ccr train` + `ccr evaluate --attention` on real photos and on digit scenes as images.

The photos are the ones matplotlib ships (plus crops), their captions a CSV, their grounding a Flickr30k
Entities folder written here; the model is SCAN with timm's smallest test network as its vision tower.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
import yaml

pytest.importorskip("timm")
pytest.importorskip("torchvision")
matplotlib = pytest.importorskip("matplotlib")

from photo_files import CAPTIONS_PER_PHOTO, PHOTOS, write_photos  # noqa: E402

from modeling_ccr.cli import main  # noqa: E402
from modeling_ccr.models.image_processing_matcher import decode_image  # noqa: E402

TOWER = {"architecture": "test_efficientnet", "image_size": 64}
# Grounding of the test photos: the marked-up caption stem and the entity's box (x1, y1, x2, y2), 1-based,
# each one cell of the tower's 2 x 2 grid (so a region is gold: IoU 1).
TEST_ENTITIES = {
    "hopper_gray.png": ("a grey photo of [/EN#1/people a woman] in uniform", (1, 1, 256, 300)),
    "present_small.png": ("[/EN#2/other a small blue gift box]", (101, 76, 200, 150)),
}


def write_test_entities(folder: Path, root: Path) -> Path:
    """Flickr30k Entities files (Sentences/*.txt, Annotations/*.xml) for the test photos."""
    entities = root / "entities"
    (entities / "Sentences").mkdir(parents=True)
    (entities / "Annotations").mkdir()
    for name, (markup, (x1, y1, x2, y2)) in TEST_ENTITIES.items():
        width, height = decode_image(folder / name).size
        (entities / "Sentences" / f"{name}.txt").write_text("".join(f"{markup} {i}\n" for i in range(3)))
        entity = markup.split("/EN#")[1].split("/")[0]
        (entities / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size><object><name>{entity}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>\n"
        )
    return entities


def write_run_config(
    path: Path, source: Path, output_dir: Path, tower: dict, captions_per_image: int
) -> Path:
    config = {
        "seed": 0,
        "output_dir": str(output_dir),
        "data": {
            "source": str(source),
            "min_word_count": 1,
            "captions_per_image": captions_per_image,
            "augmentation": {"crop_scale": [0.8, 1.0], "flip_probability": 0.5},
        },
        "model": {"backbone": "scan", "embed_dim": 16, "word_dim": 8, "ccr_weight": 0.1, "ccs_weight": 0.1,
                  "vision_tower": tower},
        "training": {"num_train_epochs": 2, "per_device_train_batch_size": 3, "per_device_eval_batch_size": 4,
                     "learning_rate": 1e-3, "logging_steps": 1},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_photos_convert_train_and_evaluate_with_attention(tmp_path, capsys):
    folder, captions = write_photos(tmp_path)
    corpus = tmp_path / "corpus"
    assert main(["convert", "images", str(folder), "--captions", str(captions), "--out", str(corpus)]) == 0
    config = write_run_config(
        tmp_path / "run.yaml", corpus, tmp_path / "run", {**TOWER, "grid": 2}, CAPTIONS_PER_PHOTO
    )
    assert main(["train", str(config)]) == 0
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "preprocessor_config.json").is_file()
    recorded = json.loads((model_dir / "eval_results_test.json").read_text())["metrics"]
    assert recorded["n_images"] == 2 and recorded["n_captions"] == 6
    capsys.readouterr()

    entities = write_test_entities(folder, tmp_path)
    out = tmp_path / "evaluation.json"
    args = ["evaluate", str(model_dir), "--attention", "--entities", str(entities), "--output", str(out)]
    assert main([*args, "--captions-per-image", str(CAPTIONS_PER_PHOTO)]) == 0
    evaluated = json.loads(out.read_text())["metrics"]
    # The same weights, the same test images: the gallery numbers equal the ones the run recorded.
    assert {k: evaluated[k] for k in recorded} == pytest.approx(recorded)
    # Every caption holds one grounded phrase; the tower's 2 x 2 grid cells are its regions.
    (attention,) = evaluated["attention"]
    assert attention["n_words"] > 0 and 0 <= attention["attention_f1"] <= 1

    # Boxes that no grid cell overlaps enough: nothing to score is said in one line, not a traceback.
    for xml in (entities / "Annotations").iterdir():
        xml.write_text(
            xml.read_text().replace("<xmax>256</xmax>", "<xmax>120</xmax>").replace("<xmin>101", "<xmin>170")
        )
    capsys.readouterr()
    assert (
        main(
            [*args, "--captions-per-image", str(CAPTIONS_PER_PHOTO), "--output", str(tmp_path / "other.json")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()  # the progress bars of the scoring, then the error
    assert "Traceback" not in err
    assert "no grounded word" in err.splitlines()[-1] and str(model_dir) in err.splitlines()[-1]


@pytest.mark.slow
def test_digit_scenes_as_images_train_and_evaluate_with_attention(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from modeling_ccr.vision.digit_scenes import DigitScenesConfig, save_digit_scenes

    scenes = DigitScenesConfig(train_images=12, validation_images=4, test_images=4, canvas_size=96)
    saved = save_digit_scenes(tmp_path / "scenes", scenes, as_images=True)
    tower = {**TOWER, "image_size": 96, "regions": "boxes"}
    config = write_run_config(
        tmp_path / "run.yaml", saved, tmp_path / "run", tower, scenes.captions_per_image
    )
    assert main(["train", str(config)]) == 0
    model_dir = tmp_path / "run" / "model"
    recorded = json.loads((model_dir / "eval_results_test.json").read_text())["metrics"]
    # The test split is grounded (boxes and digit phrases): the run measured attention on it, and, the
    # corpus being digit scenes, where the digit words' attention goes (own digit, habitat texture).
    assert recorded["attention"]["n_words"] > 0
    drift = recorded["attention_drift"]
    assert drift["head_words"] > 0 and 0 <= drift["own_region_share"] <= 1
    assert drift["own_uniform_share"] == pytest.approx(1 / 24)  # one best-IoU region of 24 boxes

    out = tmp_path / "evaluation.json"
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--attention", "--output", str(out)]) == 0
    assert "habitat texture" in capsys.readouterr().out
    evaluated = json.loads(out.read_text())["metrics"]
    assert evaluated["attention"][0]["attention_f1"] == pytest.approx(recorded["attention"]["attention_f1"])
    assert evaluated["attention_drift"][0] == pytest.approx(drift)


def test_a_feature_model_refuses_an_image_corpus_in_one_line(tmp_path, capsys):
    folder, captions = write_photos(tmp_path)
    corpus = tmp_path / "corpus"
    assert main(["convert", "images", str(folder), "--captions", str(captions), "--out", str(corpus)]) == 0
    config = write_run_config(tmp_path / "run.yaml", corpus, tmp_path / "run", TOWER, CAPTIONS_PER_PHOTO)
    settings = yaml.safe_load(config.read_text())
    del settings["model"]["vision_tower"]
    config.write_text(yaml.safe_dump(settings))
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vision_tower" in err and str(config) in err


def test_the_augmentation_section_is_checked_when_the_config_is_read(tmp_path, capsys):
    datasets.disable_progress_bars()
    config = write_run_config(tmp_path / "run.yaml", tmp_path, tmp_path / "run", TOWER, CAPTIONS_PER_PHOTO)
    settings = yaml.safe_load(config.read_text())
    settings["data"]["augmentation"] = {"flip_probability": 2}
    config.write_text(yaml.safe_dump(settings))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.augmentation" in err and "flip_probability" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_tower_frozen_for_the_whole_run_trains_on_features_encoded_once_with_the_same_result(
    tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from modeling_ccr.training import experiment

    encoded = []  # the splits each run encoded through the tower: (run, number of images)
    original = experiment.tower_feature_split

    def recording(model, split, **kwargs):
        encoded.append((name, len(split)))
        return original(model, split, **kwargs)

    monkeypatch.setattr(experiment, "tower_feature_split", recording)

    folder, captions = write_photos(tmp_path)
    corpus = tmp_path / "corpus"
    assert main(["convert", "images", str(folder), "--captions", str(captions), "--out", str(corpus)]) == 0
    tower = {**TOWER, "grid": 2, "freeze_steps": 100}
    weights = {}
    # An identity augmentation keeps the run on the pixels (the tower runs every step, frozen); without
    # one the images are encoded once. Same seed, same steps: the same model.
    for name, augmentation in (
        ("pixels", {"crop_scale": [1.0, 1.0], "flip_probability": 0.0}),
        ("cached", None),
    ):
        config = write_run_config(
            tmp_path / f"{name}.yaml", corpus, tmp_path / name, tower, CAPTIONS_PER_PHOTO
        )
        settings = yaml.safe_load(config.read_text())
        settings["data"]["augmentation"] = augmentation
        settings["training"].update(
            num_train_epochs=1, eval_strategy="no", save_strategy="no", load_best_model_at_end=False
        )
        config.write_text(yaml.safe_dump(settings))
        assert main(["train", str(config)]) == 0
        weights[name] = load_file(str(tmp_path / name / "model" / "model.safetensors"))
    train_images = sum(split == "train" for _, split in PHOTOS.values())
    assert ("cached", train_images) in encoded and ("pixels", train_images) not in encoded
    assert weights["pixels"].keys() == weights["cached"].keys()
    for key, value in weights["pixels"].items():
        torch.testing.assert_close(weights["cached"][key], value, atol=1e-5, rtol=1e-4, msg=key)
    untrained = [k for k in weights["pixels"] if k.startswith("vision_tower.")]
    assert untrained and not any(k.startswith("region_encoder") for k in untrained)
