import torch

from modeling_ccr.losses import hinge_triplet_loss


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
