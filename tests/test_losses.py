import pytest
import torch
import torch.nn.functional as F

from modeling_ccr.models.losses import (
    BASE_LOSSES,
    hinge_triplet_loss,
    infonce_loss,
    matching_loss,
    unified_loss,
)


def reference_hinge(scores, margin, hardest):
    n = len(scores)
    total = 0.0
    for i in range(n):
        caption_costs = [
            max(0.0, margin - float(scores[i][i]) + float(scores[i][j])) for j in range(n) if j != i
        ]
        image_costs = [
            max(0.0, margin - float(scores[i][i]) + float(scores[j][i])) for j in range(n) if j != i
        ]
        total += (
            (max(caption_costs) + max(image_costs)) if hardest else (sum(caption_costs) + sum(image_costs))
        )
    return total


def test_hinge_loss_matches_a_hand_computation():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.6], [0.3, 0.1, 0.7]], dtype=torch.float64)
    # hardest: image0 -> caption1 (0.2-0.9+0.8=0.1), caption0 -> image2 (0.2-0.9+0.3=0 clipped)
    # image1 -> caption2 (0.2-0.5+0.6=0.3), caption1 -> image0 (0.2-0.5+0.8=0.5)
    # image2 -> caption0 (0.2-0.7+0.3=0 clipped), caption2 -> image1 (0.2-0.7+0.6=0.1)
    loss = hinge_triplet_loss(scores, scores, margin=0.2, max_violation=True)
    torch.testing.assert_close(loss, torch.tensor(1.0, dtype=torch.float64))
    assert abs(loss.item() - reference_hinge(scores, 0.2, True)) < 1e-12


def test_sum_over_negatives_matches_the_reference():
    scores = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = hinge_triplet_loss(scores, scores, margin=0.3, max_violation=False)
    assert abs(loss.item() - reference_hinge(scores, 0.3, False)) < 1e-10


def test_local_shares_of_a_global_batch_add_up_to_the_global_loss():
    scores = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    whole = hinge_triplet_loss(scores, scores, margin=0.2, max_violation=True)
    shares = [
        hinge_triplet_loss(scores[o : o + 4], scores[:, o : o + 4], 0.2, True, offset=o) for o in (0, 4)
    ]
    torch.testing.assert_close(sum(shares), whole)


def test_perfectly_separated_scores_give_zero_loss():
    scores = torch.eye(5, dtype=torch.float64)
    assert hinge_triplet_loss(scores, scores, margin=0.2, max_violation=True).item() == 0.0


def test_two_captions_of_one_image_are_not_each_others_negatives():
    # Pairs 0 and 1 show the same image: their cross scores are high but must not count as violations.
    scores = torch.tensor([[0.9, 0.85, 0.1], [0.85, 0.9, 0.1], [0.1, 0.1, 0.9]], dtype=torch.float64)
    same_image = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert hinge_triplet_loss(scores, scores, 0.2, True).item() > 0.5
    assert hinge_triplet_loss(scores, scores, 0.2, True, same_image=same_image).item() == 0.0


def test_infonce_is_the_symmetric_cross_entropy_summed_over_the_batch():
    scores = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    targets = torch.arange(5)
    expected = F.cross_entropy(scores / 0.1, targets, reduction="sum") + F.cross_entropy(
        scores.T / 0.1, targets, reduction="sum"
    )
    torch.testing.assert_close(infonce_loss(scores, scores, temperature=0.1), expected)


def test_unified_loss_with_no_margin_and_all_negatives_is_temperature_times_infonce():
    scores = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        unified_loss(scores, scores, margin=0.0, temperature=0.2, hard_negatives=0),
        0.2 * infonce_loss(scores, scores, temperature=0.2),
    )


def test_unified_loss_tends_to_the_hardest_negative_hinge_at_low_temperature():
    scores = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    hinge = hinge_triplet_loss(scores, scores, margin=0.2, max_violation=True)
    unified = unified_loss(scores, scores, margin=0.2, temperature=1e-4, hard_negatives=1)
    torch.testing.assert_close(unified, hinge, atol=1e-3, rtol=0)


def test_unified_loss_mines_only_the_hardest_negatives():
    scores = torch.tensor(
        [[0.9, 0.8, 0.1, 0.0], [0.1, 0.9, 0.2, 0.0], [0.0, 0.1, 0.9, 0.3], [0.2, 0.0, 0.1, 0.9]]
    )
    one = unified_loss(scores, scores, margin=0.2, temperature=0.1, hard_negatives=1)
    # Hardest negative per anchor: caption side (rows) then image side (columns), for pairs 0..3.
    hardest = torch.tensor([0.8, 0.2, 0.2, 0.8, 0.3, 0.2, 0.2, 0.3])
    gaps = hardest - 0.9
    expected = (0.1 * torch.log1p(torch.exp((gaps + 0.2) / 0.1))).sum()
    torch.testing.assert_close(one, expected)
    assert unified_loss(scores, scores, margin=0.2, temperature=0.1, hard_negatives=0) > one


@pytest.mark.parametrize("name", BASE_LOSSES)
def test_every_base_loss_splits_into_local_shares_and_skips_same_image_pairs(name):
    scores = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    options = dict(margin=0.2, max_violation=True, temperature=0.1, hard_negatives=2)
    same_image = torch.eye(8, dtype=torch.bool)
    same_image[0, 1] = same_image[1, 0] = True
    whole = matching_loss(name, scores, scores, same_image=same_image, **options)
    shares = [
        matching_loss(
            name,
            scores[o : o + 4],
            scores[:, o : o + 4],
            offset=o,
            same_image=same_image[o : o + 4],
            **options,
        )
        for o in (0, 4)
    ]
    torch.testing.assert_close(sum(shares), whole)
    raised = scores.clone()
    raised[0, 1] = raised[1, 0] = 5.0  # two captions of one image: never negatives, whatever their score
    torch.testing.assert_close(matching_loss(name, raised, raised, same_image=same_image, **options), whole)
