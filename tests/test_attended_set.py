"""One attended-set rule: the attention metrics and CCS select the same keys, padding and empty rows included."""

import pytest
import torch

from modeling_ccr.metrics import attention as metrics
from modeling_ccr.metrics.attention import AttendedSetSpec, attended_regions
from modeling_ccr.models import constraints
from modeling_ccr.models.constraints import MatchedAttention, attended_set, ccs_loss


def softmax_rule(logits, query_mask, key_mask):
    scores = logits.masked_fill(~key_mask.unsqueeze(-2), float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0) * query_mask.unsqueeze(-1)


def padded_batch(seed: int, batch: int = 4, m: int = 5, n: int = 7, dim: int = 6) -> MatchedAttention:
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(batch, m, dim, generator=generator, dtype=torch.float64)
    keys = torch.randn(batch, n, dim, generator=generator, dtype=torch.float64)
    n_keys = torch.randint(1, n + 1, (batch,), generator=generator)
    n_keys[0] = n  # one unpadded pair
    n_queries = torch.randint(1, m + 1, (batch,), generator=generator)
    key_mask = torch.arange(n) < n_keys[:, None]
    query_mask = torch.arange(m) < n_queries[:, None]
    attention = softmax_rule(3 * queries @ keys.transpose(-1, -2), query_mask, key_mask)
    return MatchedAttention(queries, query_mask, keys, key_mask, attention, softmax_rule)


def reference(attention: torch.Tensor, key_mask: torch.Tensor, rule: str, value: float) -> torch.Tensor:
    """Row by row, written out: the keys each query attends to over the valid keys."""
    out = torch.zeros(attention.shape, dtype=torch.bool)
    for b in range(attention.shape[0]):
        valid = key_mask[b].nonzero().flatten().tolist()
        for t in range(attention.shape[1]):
            weights = {j: float(attention[b, t, j]) for j in valid}
            if rule == "top_k":
                chosen = sorted(valid, key=lambda j: -weights[j])[: int(value)]
            else:
                threshold = value if rule == "threshold" else 1.0 / max(len(valid), 1)
                chosen = [j for j in valid if weights[j] >= threshold]
            out[b, t, chosen] = True
    return out


def ccs_attended(matched: MatchedAttention, rule: str, top_k: int, monkeypatch) -> torch.Tensor:
    """The attended set CCS (swap_keys) actually swaps out, captured on its way to `swapped_content`."""
    seen = []
    original = constraints.swapped_content

    def recording(view, attended):
        seen.append(attended)
        return original(view, attended)

    monkeypatch.setattr(constraints, "swapped_content", recording)
    ccs_loss(matched, margin=0.2, mode="swap_keys", rule=rule, top_k=top_k)
    assert len(seen) == 1
    return seen[0]


def test_metrics_use_the_models_implementation():
    assert metrics.attended_set is constraints.attended_set
    assert metrics.ATTENDED_SET_NAMES is constraints.ATTENDED_SET_NAMES


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("rule", "value"), [("inverse_n", 0.0), ("top_k", 1), ("top_k", 3)])
def test_metric_attended_set_equals_the_constraints_on_padded_random_attention(
    seed, rule, value, monkeypatch
):
    matched = padded_batch(seed)
    from_ccs = ccs_attended(matched, rule, int(value) or 3, monkeypatch)
    key_mask = matched.key_mask.unsqueeze(1).expand_as(matched.attention)
    from_metric = attended_regions(matched.attention, key_mask, AttendedSetSpec(rule, value))
    assert torch.equal(from_metric, from_ccs)
    rows = matched.query_mask  # padded queries have all-zero rows, where top-k ties are arbitrary
    expected = reference(matched.attention, matched.key_mask, rule, value)
    assert torch.equal(from_metric[rows], expected[rows])
    assert not (from_metric & ~key_mask).any()  # padding is never attended


@pytest.mark.parametrize("seed", range(3))
def test_threshold_rule_on_padded_random_attention(seed):
    matched = padded_batch(seed)
    key_mask = matched.key_mask.unsqueeze(1).expand_as(matched.attention)
    attended = attended_regions(matched.attention, key_mask, AttendedSetSpec("threshold", 0.2))
    assert torch.equal(attended, reference(matched.attention, matched.key_mask, "threshold", 0.2))


@pytest.mark.parametrize(("rule", "value"), [("inverse_n", 0.0), ("threshold", 0.1), ("top_k", 2)])
def test_a_row_with_no_valid_key_attends_to_nothing(rule, value):
    attention = torch.tensor([[[0.5, 0.3, 0.2], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    key_mask = torch.tensor([[True, True, True], [False, False, False]])  # pair 1 has no valid key
    from_models = attended_set(attention, key_mask.unsqueeze(1), rule, value)
    from_metric = attended_regions(
        attention, key_mask.unsqueeze(1).expand_as(attention), AttendedSetSpec(rule, value)
    )
    assert torch.equal(from_models, from_metric)
    assert not from_models[1].any()
    assert from_models[0, 0].any()


def test_inverse_n_clamps_the_valid_count_at_one_instead_of_dividing_by_zero():
    # a = 1 on a padded key of a row with no valid key: with 1/0 = inf the comparison would be False anyway,
    # but the clamp keeps the threshold finite (1/1) and the padded key is still masked out
    attention = torch.tensor([[1.0, 1.0]])
    empty = torch.zeros(1, 2, dtype=torch.bool)
    assert not attended_set(attention, empty).any()
    one_valid = torch.tensor([[True, False]])
    assert attended_set(attention, one_valid).tolist() == [[True, False]]


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="attended-set rule"):
        attended_set(torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), "best")


@pytest.mark.parametrize("name", ["scan", "bfan", "sgr", "saf", "dvsa", "damsm"])
def test_every_cross_attention_backbone_exposes_attention_function_as_a_property(name):
    from modeling_ccr.models.backbones import SINGLE_BACKBONES

    config_class, model_class = SINGLE_BACKBONES[name]
    assert isinstance(getattr(model_class, "attention_function", None), property)
    extra = {"n_regions": 3} if name in ("sgr", "saf") else {}
    model = model_class(config_class(feature_dim=8, embed_dim=16, vocab_size=30, word_dim=4, **extra)).eval()
    regions = torch.randn(2, 3, 16)
    words = torch.randn(2, 4, 16)
    region_mask = torch.tensor([[True, True, True], [True, True, False]])
    word_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    for view in model.matched_attention(regions, region_mask, words, word_mask):
        logits = view.queries @ view.keys.transpose(-1, -2)
        expected = model.attention_function(logits, view.query_mask, view.key_mask)
        torch.testing.assert_close(view.attention, expected)
