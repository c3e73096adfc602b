"""Attention P/R/F1 on hand-made boxes and attention maps."""

import pytest
import torch

from modeling_ccr.evaluation.gallery import word_region_attended
from modeling_ccr.metrics.attention import (
    AttendedSetSpec,
    attended_regions,
    box_iou,
    gold_regions,
    summarize_precision_recall,
    word_precision_recall,
)

REGION_BOXES = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # 0: exactly the dog
        [0.0, 0.0, 10.0, 6.0],  # 1: IoU 0.6 with the dog
        [0.0, 0.0, 4.0, 4.0],  # 2: IoU 0.16 with the dog (a partial view)
        [20.0, 20.0, 30.0, 30.0],  # 3: exactly the car
        [50.0, 50.0, 60.0, 60.0],  # 4: clutter
    ]
)
DOG = torch.tensor([[0.0, 0.0, 10.0, 10.0]])


def test_box_iou_by_hand():
    iou = box_iou(REGION_BOXES, DOG)[:, 0]
    torch.testing.assert_close(iou, torch.tensor([1.0, 0.6, 0.16, 0.0, 0.0]))


def test_gold_regions_use_iou_at_least_one_half_with_any_box_of_the_phrase():
    assert gold_regions(REGION_BOXES, DOG).tolist() == [True, True, False, False, False]
    two_boxes = torch.cat([DOG, torch.tensor([[20.0, 20.0, 30.0, 30.0]])])
    assert gold_regions(REGION_BOXES, two_boxes).tolist() == [True, True, False, True, False]
    assert not gold_regions(REGION_BOXES, torch.zeros(0, 4)).any()


def test_attended_set_inverse_n_threshold_and_top_k():
    attention = torch.tensor([[0.5, 0.25, 0.15, 0.1, 0.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    assert attended_regions(attention, mask, AttendedSetSpec()).tolist() == [
        [True, True, False, False, False]
    ]
    three_valid = mask.clone()
    three_valid[0, 3:] = False  # 1/3 threshold over the valid keys only
    assert attended_regions(attention, three_valid, AttendedSetSpec()).tolist() == [
        [True, False, False, False, False]
    ]
    assert attended_regions(attention, mask, AttendedSetSpec("threshold", 0.12)).tolist() == [
        [True, True, True, False, False]
    ]
    assert attended_regions(attention, mask, AttendedSetSpec("top_k", 3)).tolist() == [
        [True, True, True, False, False]
    ]


def test_precision_and_recall_by_hand():
    gold = torch.tensor([[True, True, False, False, False]] * 3)
    attended = torch.tensor(
        [
            [True, False, True, False, False],  # P 1/2, R 1/2
            [True, True, True, True, False],  # P 2/4, R 1
            [False, False, False, False, False],  # empty attended set: P 0, R 0
        ]
    )
    precision, recall, valid = word_precision_recall(attended, gold)
    torch.testing.assert_close(precision, torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(recall, torch.tensor([0.5, 1.0, 0.0]))
    assert valid.all()
    summary = summarize_precision_recall(precision, recall)
    assert summary["attention_precision"] == pytest.approx(1 / 3)
    assert summary["attention_recall"] == pytest.approx(0.5)
    assert summary["attention_f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_a_word_with_no_gold_region_is_not_scored():
    _, _, valid = word_precision_recall(torch.tensor([[True, False]]), torch.tensor([[False, False]]))
    assert valid.tolist() == [False]


def test_i2t_attention_is_read_as_the_regions_that_attend_each_word():
    # 2 regions x 3 words; region 0 attends word 1 most, region 1 attends word 2.
    attentions = torch.tensor([[[0.2, 0.7, 0.1], [0.1, 0.2, 0.7]]])
    region_mask = torch.ones(1, 2, dtype=torch.bool)
    word_mask = torch.ones(1, 3, dtype=torch.bool)
    attended = word_region_attended(attentions, region_mask, word_mask, "i2t", AttendedSetSpec())
    assert attended.shape == (1, 3, 2)
    assert attended[0].tolist() == [[False, False], [True, False], [False, True]]


def test_invalid_rules_are_rejected():
    with pytest.raises(ValueError, match="rule"):
        AttendedSetSpec("best")
    with pytest.raises(ValueError, match="top_k"):
        AttendedSetSpec("top_k", 0.5)
