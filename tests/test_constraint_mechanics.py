"""benchmarks/constraint_mechanics.py: per-word constraint terms, hinge shares and gradient directions."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from modeling_ccr.errors import UserError
from modeling_ccr.metrics.attention import ContextItem
from modeling_ccr.models.constraints import MatchedAttention, ccr_loss, ccs_loss
from modeling_ccr.models.cross_attention import matched_view, scan_all_pairs, scan_attention_function

SCAN = scan_attention_function(9.0, "clipped_l2norm")


@pytest.fixture(scope="module")
def mechanics():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "constraint_mechanics.py"
    spec = importlib.util.spec_from_file_location("constraint_mechanics", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["constraint_mechanics"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["constraint_mechanics"]


def softmax_attention(logits, query_mask, key_mask):
    """Plain row softmax over valid keys, zero rows for padded queries: a toy attention function."""
    attention = logits.masked_fill(~key_mask.unsqueeze(-2).expand_as(logits), float("-inf")).softmax(-1)
    return attention * query_mask.unsqueeze(-1)


def two_region_pair(logits: torch.Tensor) -> MatchedAttention:
    """One pair, one word q = e1, region 0 = e1 (the gold one), region 1 = e2, attention from `logits` `(1, 1, 2)`."""
    ones = torch.ones(1, 1, dtype=torch.bool)
    keys = torch.eye(2).unsqueeze(0)
    return MatchedAttention(
        torch.tensor([[[1.0, 0.0]]]),
        ones,
        keys,
        torch.ones(1, 2, dtype=torch.bool),
        softmax_attention(logits, ones, torch.ones(1, 2, dtype=torch.bool)),
        softmax_attention,
    )


def test_hinge_inactive_on_a_word_attending_only_its_match_gives_share_zero(mechanics):
    # Attention one-hot on the key equal to the query: R(q, c) = 1, re-sourced content = e2, R = 0.
    matched = two_region_pair(torch.tensor([[[50.0, 0.0]]]))
    terms = mechanics.ccr_relevances(matched)
    assert float(terms.hinge(0.2).sum()) == 0.0  # 0.2 - 1 + 0 < 0
    assert float((terms.hinge(0.2)[terms.mask] > 0).float().mean()) == 0.0
    # A margin above the gap makes it active, by exactly margin - 1.
    assert float(terms.hinge(1.5)[0, 0]) == pytest.approx(0.5, abs=1e-6)


def test_ccr_descent_on_two_regions_raises_the_gold_logit(mechanics):
    # p = softmax(0.5, 0.3)_0 = 0.550: R(q, c) = 0.772, R(q, cbar) = 0.633, hinge 0.2 - 0.772 + 0.633 > 0.
    # R(q, c) rises and R(q, cbar) falls with p, so the descent raises the gold logit over the other.
    logits = torch.tensor([[[0.5, 0.3]]], requires_grad=True)
    matched = two_region_pair(logits)
    terms = mechanics.ccr_relevances(matched)
    assert float(terms.hinge(0.2)[0, 0].detach()) == pytest.approx(0.2 - 0.7725 + 0.6326, abs=1e-3)
    gradient = torch.autograd.grad(terms.loss(0.2), logits)[0]
    gold, other = torch.tensor([True, False]), torch.tensor([False, True])
    stats = mechanics.direction_stats(-gradient[0, 0], matched.attention[0, 0].detach(), gold, other)
    assert stats["gold_over_habitat"] == 1.0
    assert stats["cos_gold_habitat"] == pytest.approx(1.0)  # centred 2-vectors are +-(x, -x)
    assert stats["gold_over_argmax"] is None  # the argmax already is the gold region
    # Ascent (the wrong way) reads as pushing away from the gold region.
    away = mechanics.direction_stats(gradient[0, 0], matched.attention[0, 0].detach(), gold, other)
    assert away["gold_over_habitat"] == 0.0 and away["cos_gold_habitat"] == pytest.approx(-1.0)


def test_direction_stats_on_a_hand_computed_vector(mechanics):
    # descent (2, 0, 0) centred: (4/3, -2/3, -2/3); gold-vs-habitat d = (1, -1, 0): cos = sqrt(3) / 2;
    # gold-vs-rest d = (1, -1/2, -1/2), parallel to it: cos = 1.
    descent = torch.tensor([2.0, 0.0, 0.0])
    attention = torch.tensor([0.2, 0.7, 0.1])
    gold, habitat = torch.tensor([True, False, False]), torch.tensor([False, True, False])
    stats = mechanics.direction_stats(descent, attention, gold, habitat)
    assert stats["cos_gold_habitat"] == pytest.approx(math.sqrt(3) / 2)
    assert stats["cos_gold_rest"] == pytest.approx(1.0)
    assert stats["gold_over_argmax"] == 1.0  # argmax is region 1; delta_0 = 4/3 > delta_1 = -2/3
    # attention centred (-0.133, 0.367, -0.233): cos with (4/3, -2/3, -2/3) = -0.2667 / (0.4546 * 1.633)
    assert stats["cos_sharpen"] == pytest.approx(-0.3592, abs=1e-3)
    zero = mechanics.direction_stats(torch.zeros(3), attention, gold, None)
    assert (
        zero["cos_gold_rest"] is None
        and zero["gold_over_argmax"] is None
        and zero["cos_gold_habitat"] is None
    )


def random_view(seed: int) -> tuple[MatchedAttention, torch.Tensor]:
    """A SCAN view of 3 pairs (4 word slots, 5 region slots, padding in both) and its logits leaf."""
    generator = torch.Generator().manual_seed(seed)
    image_embeds = torch.randn(3, 5, 8, generator=generator)
    text_embeds = torch.randn(3, 4, 8, generator=generator)
    region_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    word_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    constrained = word_mask & torch.tensor([True, False, True, True])
    view = matched_view(image_embeds, region_mask, text_embeds, word_mask, "t2i", SCAN, constrained)
    logits = (view.queries @ view.keys.transpose(-1, -2)).requires_grad_()
    view.attention = SCAN(logits, view.query_mask, view.key_mask)
    return view, logits


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_per_word_terms_reproduce_the_package_losses(mechanics, seed, margin):
    view, logits = random_view(seed)
    ccr = mechanics.ccr_relevances(view)
    ccs = mechanics.ccs_relevances(view, logits, "inverse_n", 3)
    assert float(ccr.loss(margin).detach()) == pytest.approx(
        float(ccr_loss(view, margin).loss.detach()), abs=1e-6
    )
    package = ccs_loss(view, margin, "swap_keys", "inverse_n", 3)
    assert float(ccs.loss(margin).detach()) == pytest.approx(float(package.loss.detach()), abs=1e-6)
    active = ((ccs.hinge(margin) > 0) & ccs.mask).sum() / ccs.mask.sum()
    assert float(active) == pytest.approx(float(package.active_fraction))


def test_ccs_gradient_through_the_logits_is_the_packages(mechanics):
    # With logits = q K^T, every path from (q, K) to our CCS goes through the logits or the contents, as in
    # the package: equal gradients on (q, K) mean the swapped key sets take their logits from ours too.
    generator = torch.Generator().manual_seed(3)
    image_embeds = torch.randn(3, 5, 8, generator=generator).requires_grad_()
    text_embeds = torch.randn(3, 4, 8, generator=generator).requires_grad_()
    region_mask, word_mask = torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)
    view = matched_view(image_embeds, region_mask, text_embeds, word_mask, "t2i", SCAN)
    logits = view.queries @ view.keys.transpose(-1, -2)
    ours = torch.autograd.grad(
        mechanics.ccs_relevances(view, logits, "inverse_n", 3).loss(1.0),
        (image_embeds, text_embeds),
        retain_graph=True,
    )
    package = torch.autograd.grad(
        ccs_loss(view, 1.0, "swap_keys", "inverse_n", 3).loss, (image_embeds, text_embeds)
    )
    for a, b in zip(ours, package, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_matched_pair_scores_are_scans_diagonal(mechanics):
    view, _ = random_view(2)
    expected = scan_all_pairs(
        view.keys,
        view.key_mask,
        view.queries,
        view.query_mask,
        direction="t2i",
        aggregation="avg",
        lambda_softmax=9.0,
        lambda_lse=6.0,
        norm="clipped_l2norm",
    ).diagonal()
    assert torch.allclose(mechanics.matched_pair_scores(view).detach(), expected, atol=1e-5)


def test_digit_words_find_the_head_word_its_box_and_its_habitat(mechanics):
    phrases = [
        [
            {
                "phrase": "a small seven",
                "phrase_type": "other",
                "first_word": 2,
                "num_words": 3,
                "boxes": [[0, 0, 10, 10]],
            },
            {
                "phrase": "the dots",
                "phrase_type": "scene",
                "first_word": 7,
                "num_words": 2,
                "boxes": [[20, 20, 30, 30]],
            },
        ]
    ]
    positions = [[[1], [2], [3], [4], [5], [6], [7], [8], [9]]]  # word w is token w + 1 (after <start>)
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])]
    habitat = mechanics.HABITAT_TEXTURES["seven"]
    contexts = [
        [ContextItem(habitat, (20.0, 20.0, 30.0, 30.0)), ContextItem("other", (40.0, 0.0, 50.0, 10.0))]
    ]
    (word,) = mechanics.digit_words(phrases, positions, boxes, contexts)
    assert (word.pair, word.token) == (0, 5)
    assert word.own_box.tolist() == [0.0, 0.0, 10.0, 10.0]
    assert word.habitat_box.tolist() == [20.0, 20.0, 30.0, 30.0]
    # A truncated head word (no token) is skipped.
    assert mechanics.digit_words(phrases, [[[1], [2], [3], [4], [], [6]]], boxes, contexts) == []


def test_sample_batches_draw_distinct_images_and_refuse_a_small_split(mechanics):
    pairs = [(row, c, []) for row in range(6) for c in range(3)]
    batches = mechanics.sample_batches(pairs, n_batches=4, batch_size=5, seed=0)
    assert len(batches) == 4 and all(len({row for row, _, _ in b}) == 5 for b in batches)
    assert batches == mechanics.sample_batches(pairs, n_batches=4, batch_size=5, seed=0)
    with pytest.raises(UserError, match="fewer than --batch-size 7"):
        mechanics.sample_batches(pairs, n_batches=1, batch_size=7, seed=0)
