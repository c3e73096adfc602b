"""Named presets of the built-in corpus: a preset sets the knobs left at their defaults, explicit ones win."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_ccr.data.corpora import load_corpus
from modeling_ccr.data.synthetic import SYNTHETIC_PRESETS, SyntheticCorpusConfig, generate_scenes
from modeling_ccr.training.experiment import parse_experiment_config

SMALL = {"train_images": 60, "validation_images": 6, "test_images": 6, "feature_dim": 32}


def test_the_hard_preset_sets_its_knobs():
    config = SyntheticCorpusConfig.from_preset("hard")
    for name, value in SYNTHETIC_PRESETS["hard"].items():
        assert getattr(config, name) == value
    assert config.to_dict()["preset"] == "hard"


def test_an_explicit_knob_wins_over_the_preset():
    config = SyntheticCorpusConfig(preset="hard", region_noise=0.5)
    assert config.region_noise == 0.5
    assert config.attribute_strength == SYNTHETIC_PRESETS["hard"]["attribute_strength"]


def test_an_unknown_preset_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="hard"):
        SyntheticCorpusConfig(preset="harder")


def test_the_hard_preset_adds_more_noise_to_object_regions():
    def full_view_spread(config):
        scenes = generate_scenes(config, "train")
        features = [s.features[i] for s in scenes for i, r in enumerate(s.region_roles) if r == "full_view"]
        return float(np.linalg.norm(np.stack(features), axis=1).std())

    assert full_view_spread(SyntheticCorpusConfig(preset="hard", **SMALL)) > full_view_spread(
        SyntheticCorpusConfig(**SMALL)
    )


def test_a_run_config_names_the_preset_in_its_data_section():
    raw = {
        "output_dir": "x",
        "model": {"backbone": "scan"},
        "data": {"synthetic": {"preset": "hard", **SMALL}},
    }
    corpus, name = load_corpus(parse_experiment_config(raw).data, seed=0)
    assert len(corpus["train"]) == SMALL["train_images"] and "synthetic" in name


def test_hard_captions_name_fewer_objects_and_fewer_colours():
    def caption_stats(config):
        scenes = generate_scenes(config, "train")
        objects = [
            [p for p in phrases if p["phrase_type"] != "scene"]
            for scene in scenes
            for phrases in scene.phrases
        ]
        colours = sum(len(p["phrase"].split()) == 3 for phrases in objects for p in phrases)
        return (
            max(len(o) for o in objects),
            np.mean([len(o) for o in objects]),
            colours / sum(map(len, objects)),
        )

    hard_most, hard_mean, hard_colour_rate = caption_stats(SyntheticCorpusConfig(preset="hard", **SMALL))
    default_most, default_mean, default_colour_rate = caption_stats(SyntheticCorpusConfig(**SMALL))
    assert hard_most == 2 and default_most == 3
    assert hard_mean < default_mean - 0.5
    assert hard_colour_rate < default_colour_rate - 0.1
