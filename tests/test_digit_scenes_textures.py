"""Digit scenes' texture annotations for the drift measure: every drawn texture, named and boxed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from modeling_ccr.vision.digit_scenes import (
    DIGIT_WORDS,
    HABITAT_TEXTURES,
    TEXTURE_GREY,
    TEXTURES,
    DigitScenesConfig,
    DigitScenesError,
    generate_digit_scenes,
    save_digit_scenes,
    saved_scene_textures,
    scene_textures,
)

SMALL = {"train_images": 4, "validation_images": 2, "test_images": 12}


def test_every_drawn_texture_is_listed_with_its_name_and_the_box_of_its_pixels():
    config = DigitScenesConfig(**SMALL, random_context_prob=1.0)
    scenes = generate_digit_scenes(config, "test")
    textures = scene_textures(config, "test")
    assert list(textures) == [scene.image_id for scene in scenes]
    for scene in scenes:
        items = textures[scene.image_id]
        assert [item.label for item in items] == [TEXTURES[t.label][0] for t in scene.textures]
        for item in items:
            x1, y1, x2, y2 = (int(v) for v in item.box)
            grey = (scene.image == TEXTURE_GREY).all(axis=2)
            inside = grey[y1:y2, x1:x2]
            # Tight: texture pixels on every edge of the box, and none in a 3 px ring around it (the
            # nearest other item is `gap` = 8 px away).
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            ring = grey[max(y1 - 3, 0) : y2 + 3, max(x1 - 3, 0) : x2 + 3].sum()
            assert ring == inside.sum() > 0


def test_a_digits_habitat_is_the_texture_drawn_with_it_at_the_cooccurrence_knob():
    assert HABITAT_TEXTURES["three"] == TEXTURES[3][0] and HABITAT_TEXTURES["eight"] == TEXTURES[3][0]
    assert len(HABITAT_TEXTURES) == len(DIGIT_WORDS)
    config = DigitScenesConfig(**SMALL, context_cooccurrence=1.0, random_context_prob=0.0)
    textures = scene_textures(config, "test")
    for scene in generate_digit_scenes(config, "test"):
        drawn = {item.label for item in textures[scene.image_id]}
        assert drawn == {HABITAT_TEXTURES[DIGIT_WORDS[d.label]] for d in scene.digits}
    never = DigitScenesConfig(**SMALL, context_cooccurrence=0.0, random_context_prob=0.0)
    assert all(not items for items in scene_textures(never, "test").values())


def test_a_saved_corpus_gives_the_textures_of_its_recorded_config(tmp_path):
    config = DigitScenesConfig(**SMALL, seed=3)
    folder = save_digit_scenes(tmp_path / "scenes", config, as_images=True)
    assert saved_scene_textures(folder, "test") == scene_textures(config, "test")
    assert saved_scene_textures(folder, "test") != scene_textures(DigitScenesConfig(**SMALL, seed=4), "test")
    with pytest.raises(DigitScenesError, match=r"digit_scenes_config\.json"):
        saved_scene_textures(tmp_path, "test")
    # A record that does not draw the saved corpus is refused, not trusted.
    record = folder / "digit_scenes_config.json"
    record.write_text(record.read_text().replace('"seed": 3', '"seed": 4'))
    with pytest.raises(DigitScenesError, match="is not the corpus its"):
        saved_scene_textures(folder, "test")
    assert np.isfinite(
        [v for items in scene_textures(config, "train").values() for i in items for v in i.box]
    ).all()


def test_an_image_corpus_is_recorded_as_one_and_never_taken_for_a_feature_corpus(tmp_path):
    import datasets

    from modeling_ccr.vision.digit_scenes import ensure_digit_scenes

    config = DigitScenesConfig(**SMALL)
    folder = ensure_digit_scenes(tmp_path / "images", config, progress=False, as_images=True)
    assert "image" in datasets.load_from_disk(str(folder))["test"].column_names
    assert ensure_digit_scenes(folder, config, progress=False, as_images=True) == folder
    with pytest.raises(DigitScenesError, match="wanted region features"):
        ensure_digit_scenes(folder, config, progress=False)
    assert saved_scene_textures(folder, "test") == scene_textures(config, "test")
