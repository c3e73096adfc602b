"""The built-in grounded synthetic corpus: schema, determinism, grounding, and its planted failure modes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from modeling_ccr.data.schema import corpus_features, validate_corpus
from modeling_ccr.data.synthetic import (
    ATTRIBUTES,
    CATEGORIES,
    CONTEXTS,
    ROLE_CONTEXT,
    ROLE_FULL_VIEW,
    ROLE_PARTIAL,
    ROLE_PARTIAL_GOLD,
    SyntheticCorpusConfig,
    box_iou,
    build_synthetic_corpus,
    generate_scenes,
    make_prototypes,
)
from modeling_ccr.text.tokenization import split_words

SMALL = {"train_images": 60, "validation_images": 12, "test_images": 18, "feature_dim": 16}


@pytest.fixture(scope="module")
def corpus():
    return build_synthetic_corpus(SyntheticCorpusConfig(**SMALL))


@pytest.fixture(scope="module")
def scenes():
    # A larger train split (generation only, no Arrow) for rate estimates.
    return generate_scenes(SyntheticCorpusConfig(train_images=800, feature_dim=16), "train")


def _features(dataset) -> np.ndarray:
    return np.stack(list(dataset.with_format("numpy", columns=["features"])[:]["features"]))


def test_corpus_has_the_three_splits_with_the_configured_sizes(corpus):
    assert dict(corpus.num_rows) == {"train": 60, "validation": 12, "test": 18}


def test_defaults_match_the_documented_corpus():
    config = SyntheticCorpusConfig()
    assert config.split_sizes() == {"train": 3000, "validation": 300, "test": 500}
    assert (config.captions_per_image, config.n_regions, config.feature_dim) == (5, 24, 128)
    assert config.habitat_cooccurrence == 0.85


def test_every_split_follows_the_schema_and_validates(corpus):
    for split, dataset in corpus.items():
        assert dataset.features == corpus_features(16)
        validate_corpus(dataset, split, expected_feature_dim=16, captions_per_image=5)


def test_image_ids_are_unique_across_splits(corpus):
    ids = [i for split in corpus.values() for i in split["image_id"]]
    assert len(set(ids)) == len(ids)


def test_same_seed_gives_identical_corpus(corpus):
    again = build_synthetic_corpus(SyntheticCorpusConfig(**SMALL))
    for split in corpus:
        np.testing.assert_array_equal(_features(corpus[split]), _features(again[split]))
        assert corpus[split]["captions"] == again[split]["captions"]
        assert corpus[split]["phrases"] == again[split]["phrases"]


def test_different_seed_gives_different_features(corpus):
    other = build_synthetic_corpus(SyntheticCorpusConfig(**SMALL, seed=1))
    assert not np.allclose(_features(corpus["train"]), _features(other["train"]))
    assert corpus["train"]["captions"] != other["train"]["captions"]


def test_rows_are_the_generated_scenes(corpus):
    scenes = generate_scenes(SyntheticCorpusConfig(**SMALL), "validation")
    np.testing.assert_array_equal(_features(corpus["validation"]), np.stack([s.features for s in scenes]))
    assert corpus["validation"]["captions"] == [s.captions for s in scenes]


def test_float16_storage_keeps_the_schema():
    dataset = build_synthetic_corpus(SyntheticCorpusConfig(**SMALL, feature_dtype="float16"))["test"]
    assert dataset.features == corpus_features(16, dtype="float16")
    validate_corpus(dataset, "test", expected_feature_dim=16)


def test_every_phrase_span_points_at_the_phrase_words(corpus):
    n_phrases = 0
    for split in corpus.values():
        for captions, phrases in zip(split["captions"], split["phrases"], strict=True):
            for caption, caption_phrases in zip(captions, phrases, strict=True):
                words = split_words(caption)
                for p in caption_phrases:
                    span = words[p["first_word"] : p["first_word"] + p["num_words"]]
                    assert span == split_words(p["phrase"]), (caption, p)
                    n_phrases += 1
    assert n_phrases > 0


def test_captions_are_simple_lowercase_words_with_an_optional_final_period(corpus):
    for captions in corpus["train"]["captions"]:
        for caption in captions:
            words = split_words(caption)
            assert caption == caption.lower()
            assert all(w.isalpha() for w in words[:-1]) and (words[-1].isalpha() or words[-1] == ".")


def test_entity_ids_are_consistent_across_an_images_captions(corpus):
    for phrases in corpus["train"]["phrases"]:
        phrase_of_entity: dict[str, set[str]] = defaultdict(set)
        for caption_phrases in phrases:
            for p in caption_phrases:
                phrase_of_entity[p["entity_id"]].add(split_words(p["phrase"])[-1])  # the head noun
        assert all(len(heads) == 1 for heads in phrase_of_entity.values())


def test_gold_and_region_boxes_lie_in_the_image(corpus):
    for row in corpus["train"]:
        width, height = row["image_size"]
        boxes = np.array(row["boxes"])
        gold = np.array([b for ps in row["phrases"] for p in ps for b in p["boxes"]])
        for b in (boxes, gold):
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
            assert (b[:, 2] <= width + 1e-3).all() and (b[:, 3] <= height + 1e-3).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_object_phrases_have_a_full_view_region_as_gold(scenes):
    for scene in scenes[:100]:
        for obj in scene.objects:
            views = [i for i, e in enumerate(scene.region_entities) if e == obj.entity_id]
            iou = box_iou(scene.boxes[views], obj.box)[:, 0]
            roles = [scene.region_roles[i] for i in views]
            assert iou[roles.index(ROLE_FULL_VIEW)] >= 0.5


def test_habitat_cooccurs_with_its_category_at_the_configured_rate(scenes):
    present = []
    for scene in scenes:
        for obj in scene.objects:
            habitat = [c.name for c in CONTEXTS].index(CATEGORIES[obj.category].habitat)
            present.append(habitat in scene.contexts)
    assert abs(np.mean(present) - 0.85) < 0.04


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_habitat_cooccurrence_knob_is_obeyed_at_its_extremes(rate):
    scenes = generate_scenes(SyntheticCorpusConfig(**SMALL, habitat_cooccurrence=rate), "train")
    names = [c.name for c in CONTEXTS]
    present = [names.index(CATEGORIES[o.category].habitat) in s.contexts for s in scenes for o in s.objects]
    assert np.mean(present) == rate


def test_contexts_are_rarely_named(scenes):
    named = [any(p["phrase_type"] == "scene" for p in ps) for s in scenes for ps in s.phrases]
    assert 0.08 < np.mean(named) < 0.22  # context_mention_prob = 0.15, with images lacking contexts


def test_context_regions_are_never_gold_for_an_object(scenes):
    for scene in scenes[:200]:
        context = [i for i, r in enumerate(scene.region_roles) if r == ROLE_CONTEXT]
        objects = np.stack([o.box for o in scene.objects])
        if context:
            assert box_iou(scene.boxes[context], objects).max() < 0.5


def test_partial_views_are_present_some_gold_some_not(scenes):
    gold_iou, small_iou = [], []
    for scene in scenes[:300]:
        boxes = {o.entity_id: o.box for o in scene.objects}
        for box, role, entity in zip(scene.boxes, scene.region_roles, scene.region_entities, strict=True):
            if role in (ROLE_PARTIAL_GOLD, ROLE_PARTIAL):
                iou = box_iou(box, boxes[entity])[0, 0]
                (gold_iou if role == ROLE_PARTIAL_GOLD else small_iou).append(iou)
    assert len(gold_iou) > 50 and len(small_iou) > 50
    assert min(gold_iou) >= 0.5 - 1e-4 and max(small_iou) < 0.5 + 1e-4


def test_partial_views_carry_a_weaker_category_signal(scenes):
    prototypes = make_prototypes(SyntheticCorpusConfig(train_images=800, feature_dim=16))
    full, partial = [], []
    for scene in scenes[:200]:
        category = {o.entity_id: o.category for o in scene.objects}
        for feature, role, entity in zip(
            scene.features, scene.region_roles, scene.region_entities, strict=True
        ):
            if role == ROLE_FULL_VIEW:
                full.append(feature @ prototypes.category[category[entity]])
            elif role in (ROLE_PARTIAL_GOLD, ROLE_PARTIAL):
                partial.append(feature @ prototypes.category[category[entity]])
    strength = SyntheticCorpusConfig().partial_view_strength
    assert np.mean(partial) == pytest.approx(strength * np.mean(full), rel=0.1)
    assert np.mean(partial) < np.mean(full)


def _bindings(phrases: list[list[dict]]) -> frozenset[tuple[str, str]]:
    """(attribute, category) pairs an image's captions name with an attribute."""
    pairs = set()
    for caption_phrases in phrases:
        for p in caption_phrases:
            words = split_words(p["phrase"])
            if len(words) == 3 and words[1] in ATTRIBUTES:
                pairs.add((words[1], words[2]))
    return frozenset(pairs)


def test_attribute_binding_swaps_appear_across_images(corpus):
    # Group images by the sets of categories and attributes they name: swapped bindings share both sets
    # but differ in which attribute goes with which category.
    by_bag: dict[tuple, set] = defaultdict(set)
    for phrases in corpus["train"]["phrases"]:
        pairs = _bindings(phrases)
        bag = (frozenset(c for _, c in pairs), frozenset(a for a, _ in pairs))
        by_bag[bag].add(pairs)
    swapped = sum(len(b) - 1 for b in by_bag.values() if len(b) > 1)
    assert swapped >= 10


def test_binding_group_members_share_categories_and_attributes_but_not_bindings(scenes):
    groups = defaultdict(list)
    for scene in scenes:
        groups[scene.binding_group].append(scene)
    assert max(len(g) for g in groups.values()) == 6
    for group in list(groups.values())[:50]:
        bags = {
            (tuple(o.category for o in s.objects), tuple(sorted(o.attribute for o in s.objects)))
            for s in group
        }
        bindings = {tuple(o.attribute for o in s.objects) for s in group}
        assert len(bags) == 1 and len(bindings) == len(group)


def test_confusable_clutter_is_present(scenes):
    roles = [r for s in scenes[:100] for r in s.region_roles]
    assert 0.05 < roles.count("confusable") / len(roles) < 0.3


def test_config_rejects_too_few_regions():
    with pytest.raises(ValueError, match="n_regions=10 cannot hold"):
        SyntheticCorpusConfig(n_regions=10)
