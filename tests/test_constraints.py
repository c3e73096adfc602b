"""CCR and CCS on hand-computed cases, gradients, masks, and the SCAN wiring."""

from functools import partial

import pytest
import torch

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.models.constraints import (
    MatchedAttention,
    ccr_loss,
    ccs_loss,
    swapped_content,
)
from modeling_ccr.models.cross_attention import scan_attention

E = torch.eye(4, dtype=torch.float64)


def sharp_rule(logits, query_mask, key_mask):
    """A plain softmax over keys with inverse temperature 10 (easy to compute by hand)."""
    scores = (10 * logits).masked_fill(~key_mask.unsqueeze(-2), float("-inf"))
    return torch.softmax(scores, dim=-1) * query_mask.unsqueeze(-1)


def matched(queries, keys, attention=None, query_mask=None, key_mask=None, rule=sharp_rule, constrained=None):
    query_mask = torch.ones(queries.shape[:2], dtype=torch.bool) if query_mask is None else query_mask
    key_mask = torch.ones(keys.shape[:2], dtype=torch.bool) if key_mask is None else key_mask
    if attention is None:
        attention = rule(queries @ keys.transpose(-1, -2), query_mask, key_mask)
    return MatchedAttention(queries, query_mask, keys, key_mask, attention, rule, constrained)


def test_ccr_loss_is_zero_when_attention_is_on_the_true_key_at_margin_zero():
    queries = E[[0]].unsqueeze(0)  # q = e0
    keys = E[[0, 1, 2]].unsqueeze(0)  # the true key e0 and two others
    attention = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)
    term = ccr_loss(matched(queries, keys, attention), margin=0.0)
    assert term.loss.item() == 0.0 and term.active_fraction.item() == 0.0


def test_ccr_loss_by_hand_when_attention_is_on_the_wrong_key():
    queries = E[[0]].unsqueeze(0)
    keys = E[[0, 1, 2]].unsqueeze(0)
    attention = torch.tensor([[[0.0, 1.0, 0.0]]], dtype=torch.float64)  # all on e1
    # c = e1 (R = 0); re-sourced weights (1, 0, 1) / 2 give cbar = (e0 + e2) / 2 (R = 1/sqrt 2).
    term = ccr_loss(matched(queries, keys, attention), margin=0.2)
    assert term.loss.item() == pytest.approx(0.2 - 0.0 + 2**-0.5)
    assert term.active_fraction.item() == 1.0


def test_ccs_swapping_out_the_attended_key_activates_by_the_expected_amount():
    queries = torch.stack([E[[0]], E[[3]]])  # pair 0 asks for e0; pair 1 is not scored below
    keys = torch.stack([E[[0, 1]], E[[2, 1]]])  # pair 1 donates e2 at position 0
    constrained = torch.tensor([[True], [False]])
    view = matched(queries, keys, constrained=constrained)
    a0, a1 = torch.softmax(torch.tensor([10.0, 0.0], dtype=torch.float64), dim=0)
    matched_relevance = a0 / torch.sqrt(a0**2 + a1**2)
    # Position 0 (a >= 1/2) swapped for e2: keys (e2, e1) are orthogonal to e0, so R(q, c~) = 0.
    term = ccs_loss(view, margin=1.5, mode="swap_keys", rule="inverse_n", top_k=1)
    assert term.loss.item() == pytest.approx(1.5 - matched_relevance.item(), abs=1e-9)
    assert term.active_fraction.item() == 1.0


def test_ccs_costs_exactly_the_margin_when_the_swap_keeps_the_content():
    queries = torch.stack([E[[0]], E[[0]]])
    keys = torch.stack([E[[0, 1]], E[[0, 1]]])  # the other sample has the same keys
    term = ccs_loss(matched(queries, keys), margin=0.2, mode="swap_keys", rule="inverse_n", top_k=1)
    assert term.loss.item() == pytest.approx(2 * 0.2)  # R(q, c~) = R(q, c) in both pairs


def explicit_swapped_content(view, attended):
    """Brute force from the definition: build key set t, run the rule over all queries, keep row t."""
    donor_keys, donor_mask = view.keys.roll(1, dims=0), view.key_mask.roll(1, dims=0)
    batch, m, _ = view.queries.shape
    content = torch.zeros_like(view.queries)
    for b in range(batch):
        for t in range(m):
            swap = attended[b, t]
            keys = torch.where(swap[:, None], donor_keys[b], view.keys[b])
            key_mask = torch.where(swap, donor_mask[b], view.key_mask[b])
            attention = view.attention_function(view.queries[b] @ keys.T, view.query_mask[b], key_mask)
            content[b, t] = attention[t] @ keys
    return content


def test_swapped_content_matches_the_definition_with_all_queries_normalised_together():
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(
        torch.randn(3, 4, 6, generator=generator, dtype=torch.float64), dim=-1
    )
    keys = torch.nn.functional.normalize(
        torch.randn(3, 5, 6, generator=generator, dtype=torch.float64), dim=-1
    )
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    query_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    rule = partial(scan_attention, lambda_softmax=9.0, norm="clipped_l2norm")
    view = matched(queries, keys, query_mask=query_mask, key_mask=key_mask, rule=rule)
    attended = (torch.rand(3, 4, 5, generator=generator) > 0.5) & key_mask[:, None, :]
    expected = explicit_swapped_content(view, attended)
    valid = query_mask
    torch.testing.assert_close(swapped_content(view, attended)[valid], expected[valid])


def test_a_swapped_in_padding_position_removes_that_content():
    queries = torch.stack([E[[0]], E[[0]]])
    keys = torch.stack([E[[0, 1]], E[[2, 3]]])
    key_mask = torch.tensor([[True, True], [False, True]])  # the donor (pair 1) pads position 0
    view = matched(queries, keys, key_mask=key_mask)
    attended = torch.tensor([[[True, False]], [[False, False]]])
    content = swapped_content(view, attended)
    torch.testing.assert_close(content[0, 0], E[1])  # only e1 is left in pair 0's swapped set


def test_masked_keys_and_queries_never_contribute():
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    keys = torch.randn(3, 6, 5, generator=generator, dtype=torch.float64)
    query_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    key_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    rule = partial(scan_attention, lambda_softmax=9.0, norm="clipped_l2norm")

    def losses(q, k):
        view = matched(q, k, query_mask=query_mask, key_mask=key_mask, rule=rule)
        return [ccr_loss(view, 0.2).loss] + [
            ccs_loss(view, 0.2, mode, "inverse_n", 3).loss
            for mode in ("swap_keys", "swap_query", "swap_image")
        ]

    before = losses(queries, keys)
    changed_queries, changed_keys = queries.clone(), keys.clone()
    changed_queries[~query_mask] = 100.0
    changed_keys[~key_mask] = -100.0
    for a, b in zip(before, losses(changed_queries, changed_keys), strict=True):
        torch.testing.assert_close(a, b)


def tiny_scan(**constraints):
    config = ScanConfig(feature_dim=10, embed_dim=8, vocab_size=30, word_dim=6, **constraints)
    torch.manual_seed(0)
    return ScanModel(config)


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(4, 5, 10, generator=generator)
    region_mask = torch.ones(4, 5, dtype=torch.bool)
    region_mask[2, 3:] = False
    input_ids = torch.randint(4, 30, (4, 6), generator=generator)
    attention_mask = torch.ones(4, 6, dtype=torch.long)
    attention_mask[1, 4:] = 0
    return features, region_mask, input_ids, attention_mask


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("mode", ["swap_keys", "swap_query", "swap_image", "swap_within"])
def test_constraint_gradients_reach_both_encoders(direction, mode):
    model = tiny_scan(
        direction=direction, ccr_weight=1.0, ccs_weight=1.0, ccs_mode=mode, ccr_margin=2.0, ccs_margin=2.0
    )
    out = model(*batch(), return_loss=True)
    (out.ccr_loss + out.ccs_loss).backward()
    for encoder in (model.region_encoder, model.text_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    torch.testing.assert_close(out.loss, out.base_loss + out.ccr_loss + out.ccs_loss)


def test_constraint_gradients_reach_the_attention_logits():
    generator = torch.Generator().manual_seed(2)
    queries = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    keys = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    logits = (queries @ keys.transpose(-1, -2)).requires_grad_()
    attention = sharp_rule(logits, torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool))
    ccr_loss(matched(queries, keys, attention), margin=5.0).loss.backward()
    assert logits.grad.abs().sum() > 0


def test_weights_scale_the_terms_and_zero_weights_switch_them_off():
    plain = tiny_scan()(*batch(), return_loss=True)
    assert plain.ccr_loss is None and plain.ccs_loss is None
    weighted = tiny_scan(ccr_weight=3.0, ccs_weight=0.5)(*batch(), return_loss=True)
    torch.testing.assert_close(weighted.base_loss, plain.loss)
    torch.testing.assert_close(weighted.loss, plain.loss + 3.0 * weighted.ccr_loss + 0.5 * weighted.ccs_loss)


def test_skipped_words_are_never_constraint_queries():
    features, region_mask, input_ids, attention_mask = batch()
    every_word = tiny_scan(ccr_weight=1.0)(features, region_mask, input_ids, attention_mask, return_loss=True)
    skip = sorted(set(input_ids[:, :2].flatten().tolist()))
    fewer = tiny_scan(ccr_weight=1.0, constraint_skip_token_ids=skip)
    out = fewer(features, region_mask, input_ids, attention_mask, return_loss=True)
    assert not torch.allclose(out.ccr_loss, every_word.ccr_loss)
    everything = sorted(set(input_ids.flatten().tolist()))
    none_left = tiny_scan(ccr_weight=1.0, constraint_skip_token_ids=everything)
    assert (
        none_left(features, region_mask, input_ids, attention_mask, return_loss=True).ccr_loss.item() == 0.0
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(ccs_mode="swap_all"), "ccs_mode"),
        (dict(ccr_weight=-1.0), "ccr_weight"),
        (dict(constraint_attended_set="half"), "constraint_attended_set"),
    ],
)
def test_invalid_constraint_settings_are_rejected(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_scan(**overrides)


def test_ccs_takes_its_donor_from_the_previous_pair_of_the_batch():
    # Three pairs whose first key differs: e1, e2, e3. Pair i's swapped set holds its donor's first key.
    queries = torch.stack([E[[0]]] * 3)
    keys = torch.stack([E[[1, 0]], E[[2, 0]], E[[3, 0]]])
    view = matched(queries, keys)
    attended = torch.tensor([[[True, False]]] * 3)
    content = swapped_content(view, attended)
    donors = [int(content[i, 0, 1:].argmax()) + 1 for i in range(3)]  # which e_k entered pair i's content
    assert donors == [3, 1, 2]  # pair 0 <- pair 2 (the last), pair 1 <- pair 0, pair 2 <- pair 1
