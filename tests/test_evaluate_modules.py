"""The `evaluate` metric modules load offline from their folders and return what the plain functions return."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# evaluate reads these when it is imported: set them first so that loading never reaches a network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
evaluate = pytest.importorskip("evaluate")

import modeling_ccr.metrics  # noqa: E402
from modeling_ccr.metrics.attention import (  # noqa: E402
    AttendedSetSpec,
    attended_regions,
    gold_regions,
    summarize_precision_recall,
    word_precision_recall,
)
from modeling_ccr.metrics.retrieval import evaluate_retrieval  # noqa: E402

MODULES = Path(modeling_ccr.metrics.__file__).parent / "evaluate_modules"


@pytest.fixture(scope="module")
def retrieval_recall(tmp_path_factory):
    return evaluate.load(str(MODULES / "retrieval_recall"), cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def attention_prf(tmp_path_factory):
    return evaluate.load(str(MODULES / "attention_prf"), cache_dir=str(tmp_path_factory.mktemp("cache")))


def _references(caption_to_image: np.ndarray, n_images: int) -> list[list[int]]:
    """Per-image caption columns: the `references` of the retrieval module."""
    return [np.flatnonzero(caption_to_image == image).tolist() for image in range(n_images)]


# ----------------------------------------------------------------------------------------------------
# Retrieval Recall@K
# ----------------------------------------------------------------------------------------------------


def test_retrieval_module_loads_offline_from_its_folder(retrieval_recall):
    assert isinstance(retrieval_recall, evaluate.Metric)
    assert set(retrieval_recall.features) == {"predictions", "references"}


def test_retrieval_module_gives_recall_at_1_of_100_on_a_perfect_similarity_matrix(retrieval_recall):
    caption_to_image = np.repeat(np.arange(4), 5)
    similarity = (caption_to_image[None, :] == np.arange(4)[:, None]).astype(np.float32)
    results = retrieval_recall.compute(predictions=similarity, references=_references(caption_to_image, 4))
    assert results["i2t_r1"] == results["t2i_r1"] == 100.0
    assert results["rsum"] == 600.0
    assert results["n_images"] == 4 and results["n_captions"] == 20


def test_retrieval_module_equals_evaluate_retrieval_under_the_full_protocol(retrieval_recall):
    rng = np.random.default_rng(0)
    caption_to_image = np.array([0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 4, 5])  # uneven caption counts
    rng.shuffle(caption_to_image)
    similarity = rng.standard_normal((6, 12)).astype(np.float32)
    similarity[:, 3] = similarity[:, 7]  # ties: the module must keep the pessimistic tie-breaking
    results = retrieval_recall.compute(
        predictions=similarity, references=_references(caption_to_image, 6), ks=[1, 2]
    )
    assert results == evaluate_retrieval(similarity, caption_to_image, ks=(1, 2))


def test_retrieval_module_equals_evaluate_retrieval_under_the_5_fold_protocol_with_add_batch(
    retrieval_recall,
):
    rng = np.random.default_rng(1)
    caption_to_image = np.repeat(np.arange(10), 5)
    similarity = rng.standard_normal((10, 50)).astype(np.float32)
    references = _references(caption_to_image, 10)
    for start in range(0, 10, 3):
        retrieval_recall.add_batch(
            predictions=similarity[start : start + 3], references=references[start : start + 3]
        )
    results = retrieval_recall.compute(protocol="coco_5fold_1k", check_captions_per_image=5)
    expected = evaluate_retrieval(similarity, caption_to_image, protocol="coco_5fold_1k")
    assert results == expected
    assert len(results["folds"]) == 5


def test_retrieval_module_rejects_a_caption_claimed_by_two_images(retrieval_recall):
    with pytest.raises(ValueError, match="caption column 1 is claimed by image 0 and by image 1"):
        retrieval_recall.compute(predictions=[[1.0, 0.0], [0.0, 1.0]], references=[[0, 1], [1]])


def test_retrieval_module_rejects_a_caption_of_no_image(retrieval_recall):
    with pytest.raises(ValueError, match="caption column 2"):
        retrieval_recall.compute(predictions=[[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]], references=[[0], [1]])


# ----------------------------------------------------------------------------------------------------
# Attention P/R/F1
# ----------------------------------------------------------------------------------------------------

REGION_BOXES = [
    [0.0, 0.0, 10.0, 10.0],  # 0: exactly the dog
    [0.0, 0.0, 10.0, 6.0],  # 1: IoU 0.6 with the dog
    [0.0, 0.0, 4.0, 4.0],  # 2: IoU 0.16 with the dog
    [20.0, 20.0, 30.0, 30.0],  # 3: exactly the car
    [50.0, 50.0, 60.0, 60.0],  # 4: clutter
]
DOG = [[0.0, 0.0, 10.0, 10.0]]


def test_attention_module_loads_offline_from_its_folder(attention_prf):
    assert isinstance(attention_prf, evaluate.Metric)
    assert set(attention_prf.features) == {"attention", "region_boxes", "phrase_boxes"}


def test_attention_module_gives_hand_computed_precision_and_recall(attention_prf):
    # Gold regions of "dog": 0 and 1. Threshold 1/5 = 0.2.
    attention = [
        [0.5, 0.05, 0.3, 0.1, 0.05],  # attends {0, 2}: P 1/2, R 1/2
        [0.3, 0.3, 0.0, 0.2, 0.2],  # attends {0, 1, 3, 4}: P 2/4, R 1
        [0.0, 0.0, 0.0, 0.5, 0.5],  # a word of a phrase with no box: skipped
    ]
    results = attention_prf.compute(
        attention=attention, region_boxes=[REGION_BOXES] * 3, phrase_boxes=[DOG, DOG, []]
    )
    assert results["n_words"] == 2
    assert results["attention_precision"] == pytest.approx(0.5)
    assert results["attention_recall"] == pytest.approx(0.75)
    assert results["attention_f1"] == pytest.approx(2 * 0.5 * 0.75 / 1.25)
    assert results["attended_set_rule"] == AttendedSetSpec().to_dict()


@pytest.mark.parametrize(
    "rule", [AttendedSetSpec(), AttendedSetSpec("threshold", 0.3), AttendedSetSpec("top_k", 2, 0.4)]
)
def test_attention_module_equals_the_plain_functions_word_by_word(attention_prf, rule):
    rng = np.random.default_rng(2)
    attention, region_boxes, phrase_boxes = [], [], []
    precisions, recalls = [], []
    for _ in range(12):
        n_regions = int(rng.integers(1, 7))  # words of different images: different region counts
        corners = rng.uniform(0, 20, size=(n_regions, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(2, 10, size=(n_regions, 2))], axis=1)
        phrase = boxes[rng.choice(n_regions, size=int(rng.integers(0, 3)))] + rng.uniform(-1, 1, size=4)
        weights = torch.softmax(torch.tensor(rng.standard_normal(n_regions), dtype=torch.float32), dim=0)
        attention.append(weights.tolist())
        region_boxes.append(boxes.tolist())
        phrase_boxes.append(phrase.tolist())
        # The plain functions, one word at a time, on the same float32 values.
        box_tensor = torch.tensor(boxes, dtype=torch.float32)
        gold = gold_regions(box_tensor, torch.tensor(phrase, dtype=torch.float32), rule.iou_threshold)
        attended = attended_regions(weights[None], torch.ones(1, n_regions, dtype=torch.bool), rule)
        precision, recall, valid = word_precision_recall(attended, gold[None])
        precisions.append(precision[valid])
        recalls.append(recall[valid])
    expected = summarize_precision_recall(torch.cat(precisions), torch.cat(recalls))

    results = attention_prf.compute(
        attention=attention,
        region_boxes=region_boxes,
        phrase_boxes=phrase_boxes,
        rule=rule.rule,
        value=rule.value,
        iou_threshold=rule.iou_threshold,
    )
    assert {key: results[key] for key in expected} == expected
    assert results["attended_set_rule"] == rule.to_dict()


def test_attention_module_rejects_attention_and_boxes_of_different_lengths(attention_prf):
    with pytest.raises(ValueError, match="attention has 2 weights but region_boxes has 5 boxes"):
        attention_prf.compute(attention=[[0.5, 0.5]], region_boxes=[REGION_BOXES], phrase_boxes=[DOG])
