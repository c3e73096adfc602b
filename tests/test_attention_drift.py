"""The drift measure on hand-built attention whose shares are known: own region, habitat, unrelated."""

from __future__ import annotations

import datasets
import pytest
import torch

from modeling_ccr.data.schema import corpus_features
from modeling_ccr.evaluation.attention_drift import (
    ContextItem,
    attention_drift,
    drift_from_attentions,
    item_regions,
    pair_word_drifts,
    summarize_drift,
    word_drift,
    word_region_distribution,
)
from modeling_ccr.evaluation.gallery import GroundedWordAttention, grounded_word_attentions
from modeling_ccr.models import BACKBONES
from modeling_ccr.text.tokenization import build_word_tokenizer

# A 2 x 2 grid over a 100 px image: region 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
GRID = torch.tensor(
    [[0, 0, 50, 50], [50, 0, 100, 50], [0, 50, 50, 100], [50, 50, 100, 100]], dtype=torch.float32
)
ALL = torch.ones(4, dtype=torch.bool)
TOP_LEFT = torch.tensor([5.0, 5.0, 45.0, 45.0])
TOP_RIGHT = torch.tensor([55.0, 5.0, 95.0, 45.0])
BOTTOM_LEFT = torch.tensor([5.0, 55.0, 45.0, 95.0])
BOTTOM_RIGHT = torch.tensor([55.0, 55.0, 95.0, 95.0])

CAPTION = "a red three left of a blue seven near the bars"
# split_words: a(0) red(1) three(2) left(3) of(4) a(5) blue(6) seven(7) near(8) the(9) bars(10)
PHRASES = [
    {"entity_id": "digit0", "phrase": "a red three", "phrase_type": "other", "first_word": 0,
     "num_words": 3, "boxes": [TOP_LEFT.tolist()]},
    {"entity_id": "digit1", "phrase": "a blue seven", "phrase_type": "other", "first_word": 5,
     "num_words": 3, "boxes": [BOTTOM_RIGHT.tolist()]},
    {"entity_id": "texture-bars", "phrase": "the bars", "phrase_type": "scene", "first_word": 9,
     "num_words": 2, "boxes": [TOP_RIGHT.tolist()]},
]  # fmt: skip
HABITATS = {"three": "bars", "seven": "checks", "eight": "bars"}
CONTEXTS = [
    ContextItem("bars", tuple(TOP_RIGHT.tolist())),
    ContextItem("checks", tuple(BOTTOM_LEFT.tolist())),
]


def pair_with(rows: dict[int, list[float]], n_words: int = 11, row: int = 0) -> GroundedWordAttention:
    """t2i word attention `(n_words, 4)`: uniform except the given words' rows."""
    words = torch.full((n_words, 4), 0.25)
    for word, values in rows.items():
        words[word] = torch.tensor(values)
    return GroundedWordAttention(
        row=row, phrases=PHRASES, words=words, word_mask=torch.ones(n_words, dtype=torch.bool),
        region_mask=ALL, boxes=GRID,
    )  # fmt: skip


def test_the_best_rule_takes_the_one_region_of_highest_iou_and_never_a_padded_one():
    assert item_regions(GRID, ALL, TOP_RIGHT, "best").tolist() == [False, True, False, False]
    straddling = torch.tensor([30.0, 0.0, 100.0, 50.0])  # mostly in region 1
    assert item_regions(GRID, ALL, straddling, "best").tolist() == [False, True, False, False]
    padded = torch.tensor([True, False, True, True])
    assert item_regions(GRID, padded, straddling, "best").tolist() == [True, False, False, False]
    assert not item_regions(GRID, ALL, torch.tensor([200.0, 200.0, 240.0, 240.0]), "best").any()


def test_the_inside_rule_takes_every_region_at_least_half_inside_the_box_else_the_best():
    left_half = torch.tensor([0.0, 0.0, 50.0, 100.0])
    assert item_regions(GRID, ALL, left_half, "inside").tolist() == [True, False, True, False]
    # Region 1 lies wholly inside this box, region 0 only 40 %.
    assert item_regions(GRID, ALL, torch.tensor([30.0, 0.0, 100.0, 50.0]), "inside").tolist() == [
        False, True, False, False,
    ]  # fmt: skip
    # A box smaller than every region has no region half inside it: the best one stands for it.
    assert item_regions(GRID, ALL, torch.tensor([10.0, 10.0, 20.0, 20.0]), "inside").tolist() == [
        True, False, False, False,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="region rule must be one of"):
        item_regions(GRID, ALL, TOP_LEFT, "centre")


def test_word_drift_gives_the_shares_of_own_habitat_and_unrelated_regions_against_uniform():
    drift = word_drift(
        torch.tensor([0.5, 0.3, 0.15, 0.05]), GRID, ALL, TOP_LEFT, TOP_RIGHT, [BOTTOM_LEFT, BOTTOM_RIGHT]
    )
    assert drift.own == pytest.approx(0.5) and drift.own_uniform == pytest.approx(0.25)
    assert drift.own_is_argmax
    assert drift.habitat == pytest.approx(0.3) and drift.habitat_uniform == pytest.approx(0.25)
    assert drift.unrelated == pytest.approx((0.15 + 0.05) / 2)
    lost = word_drift(torch.tensor([0.2, 0.5, 0.2, 0.1]), GRID, ALL, TOP_LEFT, None, [])
    assert not lost.own_is_argmax and lost.habitat is None and lost.unrelated is None


def test_a_context_region_shared_with_the_own_object_is_not_counted_as_drift():
    # The habitat's best region is the digit's own one: no region is left to measure drift on.
    drift = word_drift(
        torch.tensor([0.7, 0.1, 0.1, 0.1]), GRID, ALL, TOP_LEFT, torch.tensor([0, 0, 40, 40]), []
    )
    assert drift.own == pytest.approx(0.7) and drift.habitat is None


def test_uniform_shares_count_only_valid_regions():
    mask = torch.tensor([True, True, True, False])
    drift = word_drift(torch.tensor([0.4, 0.3, 0.3, 0.0]), GRID, mask, TOP_LEFT, TOP_RIGHT, [BOTTOM_LEFT])
    assert drift.own_uniform == pytest.approx(1 / 3) and drift.habitat_uniform == pytest.approx(1 / 3)


def test_each_digit_word_is_measured_against_its_own_habitat_and_the_other_textures():
    pair = pair_with({2: [0.6, 0.3, 0.1, 0.0], 7: [0.1, 0.0, 0.4, 0.5]})
    three, seven = pair_word_drifts(pair, CONTEXTS, HABITATS, "t2i", ("other",))
    assert (three.word, seven.word) == ("three", "seven")  # the texture phrase (scene) is no head word
    assert three.own == pytest.approx(0.6)
    assert three.habitat == pytest.approx(0.3)  # bars (top right) is the three's habitat
    assert three.unrelated == pytest.approx(0.1)  # checks (bottom left) is not
    assert seven.own == pytest.approx(0.5)
    assert seven.habitat == pytest.approx(0.4)  # checks is the seven's habitat
    assert seven.unrelated == pytest.approx(0.0)  # bars is not


def test_a_word_whose_habitat_is_absent_has_no_habitat_share_and_no_paired_drift():
    pair = pair_with({2: [0.6, 0.3, 0.1, 0.0], 7: [0.1, 0.0, 0.4, 0.5]})
    only_checks = [ContextItem("checks", tuple(BOTTOM_LEFT.tolist()))]
    three, seven = pair_word_drifts(pair, only_checks, HABITATS, "t2i", ("other",))
    assert three.habitat is None and three.unrelated == pytest.approx(0.1)
    assert seven.habitat == pytest.approx(0.4) and seven.unrelated is None
    summary = summarize_drift([three, seven])
    assert summary["words_with_both"] == 0 and summary["drift"] is None


def test_a_truncated_head_word_or_an_unknown_word_is_skipped():
    pair = pair_with({})
    pair.word_mask[7] = False  # "seven" lost its token
    assert [d.word for d in pair_word_drifts(pair, CONTEXTS, HABITATS, "t2i", ("other",))] == ["three"]
    assert pair_word_drifts(pair, CONTEXTS, {"seven": "checks"}, "t2i", ("other",)) == []


def test_i2t_attention_is_read_as_the_words_column_renormalised_over_regions():
    words = torch.full((4, 11), 0.01)  # (n_regions, n_words): each region's attention over words
    words[:, 2] = torch.tensor([0.6, 0.2, 0.2, 0.0])
    pair = GroundedWordAttention(0, PHRASES, words, torch.ones(11, dtype=torch.bool), ALL, GRID)
    distribution = word_region_distribution(pair, 2, "i2t")
    assert distribution.tolist() == pytest.approx([0.6, 0.2, 0.2, 0.0])
    assert pair_word_drifts(pair, CONTEXTS, HABITATS, "i2t", ("other",))[0].own == pytest.approx(0.6)


def test_the_summary_pairs_habitat_and_unrelated_shares_of_the_same_words():
    pairs = [
        pair_with({2: [0.6, 0.3, 0.1, 0.0], 7: [0.1, 0.0, 0.4, 0.5]}, row=0),
        pair_with({2: [0.2, 0.2, 0.2, 0.4], 7: [0.25, 0.25, 0.25, 0.25]}, row=1),
    ]
    summary = drift_from_attentions(
        pairs, ["img0", "img1"], {"img0": CONTEXTS, "img1": CONTEXTS}, HABITATS, "t2i", ("other",)
    )
    assert summary["head_words"] == 4 and summary["words_with_both"] == 4
    assert summary["own_region_share"] == pytest.approx((0.6 + 0.5 + 0.2 + 0.25) / 4)
    assert summary["own_uniform_share"] == pytest.approx(0.25)
    assert summary["own_over_uniform"] == pytest.approx((0.6 + 0.5 + 0.2 + 0.25) / 4 / 0.25)
    # The second caption's three prefers region 3, and its seven's flat row peaks at region 0 (the first).
    assert summary["own_region_is_argmax"] == pytest.approx(2 / 4)
    assert summary["habitat_share"] == pytest.approx((0.3 + 0.4 + 0.2 + 0.25) / 4)
    assert summary["unrelated_share"] == pytest.approx((0.1 + 0.0 + 0.2 + 0.25) / 4)
    assert summary["drift"] == pytest.approx((0.2 + 0.4 + 0.0 + 0.0) / 4)
    with pytest.raises(ValueError, match="no context items for image_id 'img1'"):
        drift_from_attentions(pairs, ["img0", "img1"], {"img0": CONTEXTS}, HABITATS, "t2i", ("other",))
    with pytest.raises(ValueError, match="no head word"):
        summarize_drift([])


def test_attention_drift_reads_the_models_attention_on_each_image_with_that_images_contexts():
    """The wrapper: a real (random) SCAN's attention, each row's contexts found by its image id."""
    captions = [[CAPTION], ["a blue seven right of a red three"]]
    second = [
        {**PHRASES[1], "first_word": 0, "boxes": [TOP_LEFT.tolist()]},
        {**PHRASES[0], "first_word": 5, "boxes": [BOTTOM_RIGHT.tolist()]},
    ]
    split = datasets.Dataset.from_dict(
        {
            "image_id": ["img0", "img1"],
            "features": [torch.randn(4, 8).numpy(), torch.randn(4, 8).numpy()],
            "boxes": [GRID.numpy(), GRID.numpy()],
            "image_size": [[100, 100], [100, 100]],
            "captions": captions,
            "phrases": [[PHRASES], [second]],
        },
        features=corpus_features(8),
    )
    tokenizer = build_word_tokenizer([c[0] for c in captions], 1)
    config_class, model_class = BACKBONES["scan"]
    torch.manual_seed(0)
    config = config_class(
        vocab_size=len(tokenizer), feature_dim=8, embed_dim=16, word_dim=8, lambda_softmax=20.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = model_class(config).eval()
    contexts = {"img0": CONTEXTS, "img1": [ContextItem("checks", tuple(TOP_RIGHT.tolist()))]}
    found = attention_drift(model, tokenizer, split, contexts, HABITATS, ("other",))
    rows = list(grounded_word_attentions(model, tokenizer, split))
    three0, seven0, seven1 = rows[0].words[2], rows[0].words[7], rows[1].words[2]
    assert found["head_words"] == 4
    # img1 holds only the checks, top right: the seven's habitat; the three (bottom right) has none there.
    assert found["words_with_habitat"] == 3 and found["words_with_both"] == 2
    expected = (float(three0[1]) + float(seven0[2]) + float(seven1[1])) / 3
    assert found["habitat_share"] == pytest.approx(expected, abs=1e-6)
    expected = (float(three0[1] - three0[2]) + float(seven0[2] - seven0[1])) / 2
    assert found["drift"] == pytest.approx(expected, abs=1e-6)


def test_the_other_object_share_is_the_attention_on_the_other_digit_the_caption_names():
    pair = pair_with({2: [0.6, 0.3, 0.1, 0.0], 7: [0.1, 0.0, 0.4, 0.5]})
    three, seven = pair_word_drifts(pair, CONTEXTS, HABITATS, "t2i", ("other",))
    assert three.other == pytest.approx(0.0)  # the seven is bottom right (region 3)
    assert seven.other == pytest.approx(0.1)  # the three is top left (region 0)
    assert three.other_uniform == pytest.approx(0.25)
    summary = summarize_drift([three, seven])
    assert summary["words_with_other_object"] == 2
    assert summary["other_object_share"] == pytest.approx(0.05)
    assert summary["own_minus_other_object"] == pytest.approx(((0.6 - 0.0) + (0.5 - 0.1)) / 2)
    # A caption naming one digit has no other object to compare with.
    alone = GroundedWordAttention(0, PHRASES[:1], pair.words, pair.word_mask, ALL, GRID)
    (only,) = pair_word_drifts(alone, CONTEXTS, HABITATS, "t2i", ("other",))
    assert only.other is None
