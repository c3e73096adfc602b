"""GPO, VSE-infinity's pooling head, against a float64 reference written from the paper and its code:
sinusoidal position encodings, a hand-written bidirectional GRU, softmax over ranks at temperature 0.1,
features sorted per dimension."""

import math

import pytest
import torch

from modeling_ccr.models.pooling import GeneralizedPooling, sinusoidal_positions


def reference_positions(n, dim):
    return torch.tensor(
        [
            [
                math.sin(p / 10000 ** (i / dim)) if i % 2 == 0 else math.cos(p / 10000 ** ((i - 1) / dim))
                for i in range(dim)
            ]
            for p in range(n)
        ],
        dtype=torch.float64,
    )


def reference_gru_direction(inputs, w_ih, w_hh, b_ih, b_hh):
    """One GRU direction over `inputs` (n, d_in), h0 = 0: r, z, n gates as in the GRU paper."""
    hidden = w_hh.shape[1]
    h = torch.zeros(hidden, dtype=torch.float64)
    outputs = []
    for x in inputs:
        gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
        r = torch.sigmoid(gi[:hidden] + gh[:hidden])
        z = torch.sigmoid(gi[hidden : 2 * hidden] + gh[hidden : 2 * hidden])
        n = torch.tanh(gi[2 * hidden :] + r * gh[2 * hidden :])
        h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs)


def reference_gpo(pool, items, mask):
    """Pooled vector of one set: items (n, D), mask (n,) bool."""
    real = items[mask].double()
    n = len(real)
    positions = reference_positions(n, pool.position_dim)
    p = {name: value.detach().double() for name, value in pool.gru.named_parameters()}
    forward = reference_gru_direction(
        positions, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]
    )
    backward = reference_gru_direction(
        positions.flip(0),
        p["weight_ih_l0_reverse"],
        p["weight_hh_l0_reverse"],
        p["bias_ih_l0_reverse"],
        p["bias_hh_l0_reverse"],
    ).flip(0)
    states = (forward + backward) / 2
    logits = states @ pool.linear.weight.detach().double()[0]
    theta = torch.softmax(logits / pool.temperature, dim=0)
    ordered = torch.stack(
        [torch.sort(real[:, d], descending=True).values for d in range(real.shape[1])], dim=1
    )
    return (theta[:, None] * ordered).sum(dim=0)


def padded_sets(seed=0, dim=5):
    generator = torch.Generator().manual_seed(seed)
    items = torch.randn(4, 7, dim, generator=generator, dtype=torch.float64)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 3:] = False  # trailing padding
    mask[2, 2] = False  # a dropped item in the middle
    mask[3, 1:] = False  # a single item
    return items, mask


def tiny_pool(seed=0):
    torch.manual_seed(seed)
    pool = GeneralizedPooling(position_dim=8, hidden_dim=6)
    pool.reset_parameters()
    return pool.double()


def test_sinusoidal_positions_match_the_transformer_formula():
    got = sinusoidal_positions(9, 8, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(got, reference_positions(9, 8), rtol=0, atol=1e-12)


def test_gpo_matches_the_float64_reference_with_padding():
    pool = tiny_pool()
    items, mask = padded_sets()
    pooled = pool(items, mask)
    expected = torch.stack([reference_gpo(pool, items[b], mask[b]) for b in range(len(items))])
    assert pooled.shape == (4, 5)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-5)


def test_where_the_padding_sits_and_extra_padding_do_not_change_the_pooled_vector():
    pool = tiny_pool()
    items, mask = padded_sets()
    shuffled = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    wider_items = torch.cat([items[:, shuffled], torch.full((4, 2, 5), 50.0, dtype=torch.float64)], dim=1)
    wider_mask = torch.cat([mask[:, shuffled], torch.zeros(4, 2, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(pool(wider_items, wider_mask), pool(items, mask))


def test_a_zero_scoring_vector_makes_gpo_the_mean_of_the_real_items():
    pool = tiny_pool()
    with torch.no_grad():
        pool.linear.weight.zero_()
    items, mask = padded_sets()
    weights = mask[..., None].double()
    torch.testing.assert_close(pool(items, mask), (items * weights).sum(1) / weights.sum(1))


def test_pool_weights_are_a_softmax_over_the_real_ranks_and_zero_beyond():
    pool = tiny_pool()
    weights = pool.pool_weights(torch.tensor([3, 1, 5, 3]), 6)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4, dtype=torch.float64))
    assert (weights[0, 3:] == 0).all() and (weights[1, 1:] == 0).all() and (weights[2, 5:] == 0).all()
    torch.testing.assert_close(weights[0], weights[3])


def test_gradients_reach_the_items_and_the_weight_generator():
    pool = tiny_pool()
    items, mask = padded_sets()
    items.requires_grad_(True)
    pool(items, mask).square().sum().backward()
    assert items.grad[~mask].abs().sum() == 0 and items.grad[mask].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pool.parameters())


def test_an_all_padding_row_is_refused():
    pool = tiny_pool()
    items, mask = padded_sets()
    mask[0] = False
    with pytest.raises(ValueError, match="at least one item"):
        pool(items, mask)
