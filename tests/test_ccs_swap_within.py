"""CCS `swap_within`: the contrast is the content another word of the same caption attends to."""

import pytest
import torch

from modeling_ccr.models.constraints import MatchedAttention, ccs_loss, next_scored_query, relevance


def uniform_rule(logits, query_mask, key_mask):
    return torch.softmax(logits.masked_fill(~key_mask.unsqueeze(-2), -1e9), dim=-1)


def test_next_scored_query_wraps_around_inside_each_pair_and_skips_unscored_positions():
    scored = torch.tensor(
        [[True, False, True, True], [False, True, False, False], [True, True, False, False]]
    )
    partner, has_partner = next_scored_query(scored)
    assert partner[0, [0, 2, 3]].tolist() == [2, 3, 0]
    assert partner[2, [0, 1]].tolist() == [1, 0]
    assert has_partner.tolist() == [
        [True, False, True, True],
        [False, False, False, False],
        [True, True, False, False],
    ]


def test_swap_within_equals_the_hinge_written_out_by_hand():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    keys = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    query_mask = torch.tensor([[True, True, True], [True, True, False]])
    key_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    attention = uniform_rule(queries @ keys.transpose(1, 2), query_mask, key_mask)
    view = MatchedAttention(queries, query_mask, keys, key_mask, attention, uniform_rule)
    margin = 0.5
    expected = 0.0
    for b, order in ((0, [0, 1, 2]), (1, [0, 1])):
        terms = []
        for i, t in enumerate(order):
            u = order[(i + 1) % len(order)]
            own = relevance(queries[b, t], attention[b, t] @ keys[b])
            other = relevance(queries[b, t], attention[b, u] @ keys[b])
            terms.append((margin - own + other).clamp_min(0))
        expected += sum(terms) / len(terms)
    term = ccs_loss(view, margin=margin, mode="swap_within", rule="inverse_n", top_k=1)
    assert term.loss.item() == pytest.approx(float(expected), abs=1e-12)


def test_swap_within_is_zero_when_each_word_attends_its_own_key_and_works_on_one_pair():
    keys = torch.eye(3, dtype=torch.float64).unsqueeze(0)
    queries = keys.clone()
    mask = torch.ones(1, 3, dtype=torch.bool)
    attention = torch.eye(3, dtype=torch.float64).unsqueeze(0)
    view = MatchedAttention(queries, mask, keys, mask, attention, uniform_rule)
    assert ccs_loss(view, margin=0.5, mode="swap_within", rule="inverse_n", top_k=1).loss.item() == 0.0
    # The same attention swapped between words: every word now attends another word's key.
    swapped = MatchedAttention(queries, mask, keys, mask, attention.roll(1, dims=1), uniform_rule)
    assert ccs_loss(swapped, margin=0.5, mode="swap_within", rule="inverse_n", top_k=1).loss.item() > 1.0
