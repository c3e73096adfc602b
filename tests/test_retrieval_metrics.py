"""Retrieval metrics: ranks, recalls, the 5-fold protocol, chance level and input validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from modeling_ccr.metrics.retrieval import (
    chance_metrics,
    chance_recall,
    evaluate_retrieval,
    format_results_table,
    recall_metrics,
    retrieval_ranks,
)

RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def perfect_similarity(n_images: int, captions_per_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_images, n_images * c) with 1 on each image's own captions and 0 elsewhere."""
    caption_to_image = torch.arange(n_images).repeat_interleave(captions_per_image)
    similarity = (caption_to_image[None, :] == torch.arange(n_images)[:, None]).float()
    return similarity, caption_to_image


def reference_ranks(similarity: np.ndarray, caption_to_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loop-by-loop definition of the pessimistic ranks, to check the vectorised version against."""
    n_images, n_captions = similarity.shape
    i2t = np.zeros(n_images, dtype=np.int64)
    for i in range(n_images):
        own = caption_to_image == i
        best = similarity[i, own].max()
        i2t[i] = 1 + sum(similarity[i, j] >= best for j in range(n_captions) if not own[j])
    t2i = np.zeros(n_captions, dtype=np.int64)
    for j in range(n_captions):
        g = caption_to_image[j]
        t2i[j] = 1 + sum(similarity[i, j] >= similarity[g, j] for i in range(n_images) if i != g)
    return i2t, t2i


# 3 images x 6 captions, 2 captions per image; ranks worked out by hand below.
HAND_SIMILARITY = torch.tensor(
    [
        [0.90, 0.10, 0.80, 0.20, 0.30, 0.00],
        [0.50, 0.75, 0.40, 0.70, 0.20, 0.10],
        [0.10, 0.20, 0.36, 0.40, 0.35, 0.25],
    ]
)
HAND_CAPTION_TO_IMAGE = torch.tensor([0, 0, 1, 1, 2, 2])
# i2t: image 0 best own 0.90, no wrong caption >= it -> 1; image 1 best own 0.70, wrong 0.75 -> 2;
# image 2 best own 0.35, wrong 0.36 and 0.40 -> 3.
HAND_I2T = [1, 2, 3]
# t2i by column: c0 0.90 top -> 1; c1 0.10 under 0.75, 0.20 -> 3; c2 0.40 under 0.80 -> 2; c3, c4, c5 top -> 1.
HAND_T2I = [1, 3, 2, 1, 1, 1]


def test_perfect_similarity_gives_rank_one_and_full_recall() -> None:
    similarity, caption_to_image = perfect_similarity(8, 5)
    i2t, t2i = retrieval_ranks(similarity, caption_to_image)
    assert i2t.tolist() == [1] * 8
    assert t2i.tolist() == [1] * 40
    metrics = evaluate_retrieval(similarity, caption_to_image)
    for key in RECALL_KEYS:
        assert metrics[key] == 100.0
    assert metrics["rsum"] == 600.0
    assert metrics["i2t_medr"] == metrics["t2i_medr"] == 1.0
    assert metrics["i2t_meanr"] == metrics["t2i_meanr"] == 1.0
    assert (metrics["protocol"], metrics["n_images"], metrics["n_captions"]) == ("full", 8, 40)


def test_hand_made_matrix_gives_hand_computed_ranks() -> None:
    i2t, t2i = retrieval_ranks(HAND_SIMILARITY, HAND_CAPTION_TO_IMAGE)
    assert i2t.tolist() == HAND_I2T
    assert t2i.tolist() == HAND_T2I


def test_hand_made_matrix_gives_hand_computed_metrics() -> None:
    metrics = evaluate_retrieval(HAND_SIMILARITY, HAND_CAPTION_TO_IMAGE)
    assert metrics["i2t_r1"] == pytest.approx(100 / 3)
    assert metrics["i2t_r5"] == metrics["i2t_r10"] == 100.0
    assert metrics["t2i_r1"] == pytest.approx(400 / 6)
    assert metrics["t2i_r5"] == metrics["t2i_r10"] == 100.0
    assert metrics["i2t_medr"] == 2.0 and metrics["i2t_meanr"] == 2.0
    assert metrics["t2i_medr"] == 1.0 and metrics["t2i_meanr"] == 1.5


def test_constant_matrix_gets_the_worst_ranks_not_a_perfect_score() -> None:
    n_images, c = 4, 5
    caption_to_image = torch.arange(n_images).repeat_interleave(c)
    i2t, t2i = retrieval_ranks(torch.full((n_images, n_images * c), 0.3), caption_to_image)
    assert i2t.tolist() == [n_images * c - c + 1] * n_images  # every wrong caption ties with the best own
    assert t2i.tolist() == [n_images] * (n_images * c)  # every wrong image ties with the true one
    metrics = recall_metrics(i2t, t2i)
    assert metrics["i2t_r1"] == metrics["t2i_r1"] == 0.0


def test_a_wrong_candidate_tying_with_the_correct_one_counts_against_it() -> None:
    similarity = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    i2t, t2i = retrieval_ranks(similarity, torch.tensor([0, 1]))
    assert i2t.tolist() == [2, 1]  # image 0: its caption ties with caption 1
    assert t2i.tolist() == [1, 1]


def test_i2t_ranks_the_best_of_an_images_captions() -> None:
    # Image 0 has 5 captions: four score far below the wrong ones, one scores above them all.
    caption_to_image = torch.tensor([0] * 5 + [1] * 5)
    similarity = torch.zeros(2, 10)
    similarity[0, :5] = torch.tensor([0.0, 0.0, 0.95, 0.0, 0.0])
    similarity[0, 5:] = 0.5
    # Image 1's best own caption (0.6) is beaten by two of image 0's captions (0.7, 0.65).
    similarity[1, :5] = torch.tensor([0.7, 0.65, 0.1, 0.1, 0.1])
    similarity[1, 5:] = torch.tensor([0.2, 0.6, 0.3, 0.0, 0.0])
    i2t, _ = retrieval_ranks(similarity, caption_to_image)
    assert i2t.tolist() == [1, 3]


def test_five_fold_protocol_averages_hand_computed_folds() -> None:
    # 10 images x 5 captions, 5 folds of 2 images. Folds 1 and 3 are "swapped": each image prefers the
    # other image's captions. Off-fold blocks score 1000, which would ruin every rank if they leaked in.
    n_images, c, fold_size = 10, 5, 2
    caption_to_image = torch.arange(n_images).repeat_interleave(c)
    image_fold = torch.arange(n_images) // fold_size
    caption_fold = caption_to_image // fold_size
    own = (caption_to_image[None, :] == torch.arange(n_images)[:, None]).float()
    similarity = torch.where(image_fold[:, None] == caption_fold[None, :], own, torch.tensor(1000.0))
    for fold in (1, 3):
        rows, cols = slice(2 * fold, 2 * fold + 2), slice(10 * fold, 10 * fold + 10)
        similarity[rows, cols] = 1.0 - similarity[rows, cols]

    metrics = evaluate_retrieval(similarity, caption_to_image, protocol="coco_5fold_1k", n_folds=5)
    # Good folds: all ranks 1. Swapped folds: i2t rank 1 + 5 = 6, t2i rank 2.
    expected = {
        "i2t_r1": 60.0,
        "i2t_r5": 60.0,
        "i2t_r10": 100.0,
        "t2i_r1": 60.0,
        "t2i_r5": 100.0,
        "t2i_r10": 100.0,
        "rsum": 480.0,
        "i2t_medr": 3.0,  # (3 * 1 + 2 * 6) / 5
        "i2t_meanr": 3.0,
        "t2i_medr": 1.4,  # (3 * 1 + 2 * 2) / 5
        "t2i_meanr": 1.4,
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert len(metrics["folds"]) == 5
    assert metrics["folds"][1]["i2t_r1"] == 0.0 and metrics["folds"][2]["i2t_r1"] == 100.0
    assert (metrics["protocol"], metrics["n_folds"], metrics["n_images"], metrics["n_captions"]) == (
        "coco_5fold_1k",
        5,
        10,
        50,
    )
    # The same matrix evaluated all at once is ruined by the off-fold scores.
    assert evaluate_retrieval(similarity, caption_to_image)["i2t_r1"] == 0.0


def test_five_fold_protocol_equals_the_mean_of_full_evaluations_of_each_fold() -> None:
    generator = torch.Generator().manual_seed(0)
    caption_to_image = torch.arange(20).repeat_interleave(5)
    similarity = torch.randn(20, 100, generator=generator)
    metrics = evaluate_retrieval(similarity, caption_to_image, protocol="coco_5fold_1k", n_folds=4)
    per_fold = [
        evaluate_retrieval(similarity[5 * f : 5 * f + 5, 25 * f : 25 * f + 25], caption_to_image[:25])
        for f in range(4)
    ]
    for key in (*RECALL_KEYS, "rsum", "i2t_meanr", "t2i_medr"):
        assert metrics[key] == pytest.approx(np.mean([fold[key] for fold in per_fold])), key


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 37, 1000])
def test_chunked_ranks_equal_the_loop_definition(chunk_size: int) -> None:
    rng = np.random.default_rng(chunk_size)
    counts = rng.integers(1, 8, size=37)  # uneven caption counts per image
    caption_to_image = rng.permutation(np.repeat(np.arange(37), counts))
    # Rounded scores make many ties, exercising the pessimistic rule.
    similarity = np.round(rng.normal(size=(37, caption_to_image.size)), 1).astype(np.float32)
    expected_i2t, expected_t2i = reference_ranks(similarity, caption_to_image)
    i2t, t2i = retrieval_ranks(similarity, caption_to_image, chunk_size=chunk_size)
    np.testing.assert_array_equal(i2t.numpy(), expected_i2t)
    np.testing.assert_array_equal(t2i.numpy(), expected_t2i)


def test_numpy_and_torch_inputs_give_the_same_ranks() -> None:
    rng = np.random.default_rng(1)
    similarity = rng.normal(size=(6, 30))
    caption_to_image = np.repeat(np.arange(6), 5)
    from_numpy = retrieval_ranks(similarity, caption_to_image)
    from_torch = retrieval_ranks(torch.from_numpy(similarity), torch.from_numpy(caption_to_image))
    assert all(torch.equal(a, b) for a, b in zip(from_numpy, from_torch, strict=True))


def test_rsum_is_the_sum_of_the_six_recalls() -> None:
    rng = np.random.default_rng(2)
    metrics = evaluate_retrieval(rng.normal(size=(30, 150)), np.repeat(np.arange(30), 5))
    assert metrics["rsum"] == pytest.approx(sum(metrics[key] for key in RECALL_KEYS))
    assert 0.0 < metrics["rsum"] < 600.0


def test_median_rank_is_the_floor_of_the_median() -> None:
    metrics = recall_metrics(np.array([1, 2]), np.array([1, 2, 3, 4]))
    assert metrics["i2t_medr"] == 1.0  # median 1.5
    assert metrics["t2i_medr"] == 2.0  # median 2.5
    assert metrics["t2i_meanr"] == 2.5


@pytest.mark.parametrize(("n_images", "c"), [(3, 2), (4, 1), (2, 3)])
def test_chance_recall_matches_a_brute_force_count(n_images: int, c: int) -> None:
    n_captions = n_images * c
    own = set(range(c))  # image 0's captions; any image gives the same count by symmetry
    for k in range(1, n_captions + 1):
        subsets = list(itertools.combinations(range(n_captions), k))
        hits = sum(bool(own.intersection(subset)) for subset in subsets)
        t2i_hits = sum(0 in subset for subset in itertools.combinations(range(n_images), min(k, n_images)))
        t2i_total = math.comb(n_images, min(k, n_images))
        chance = chance_recall(n_images, c, k)
        assert chance["i2t"] == pytest.approx(100 * hits / len(subsets)), k
        assert chance["t2i"] == pytest.approx(100 * t2i_hits / t2i_total), k


def test_chance_recall_is_finite_and_exact_for_coco_5k_sizes() -> None:
    chance = chance_recall(5000, 5, 10)
    exact = 1 - math.comb(25000 - 5, 10) / math.comb(25000, 10)
    assert chance["i2t"] == pytest.approx(100 * exact, rel=1e-9)
    assert chance["t2i"] == pytest.approx(100 * 10 / 5000)


def test_random_similarity_recalls_match_chance_level() -> None:
    n_images, c, trials = 20, 5, 200
    generator = torch.Generator().manual_seed(3)
    caption_to_image = torch.arange(n_images).repeat_interleave(c)
    i2t_all, t2i_all = [], []
    for _ in range(trials):
        i2t, t2i = retrieval_ranks(torch.rand(n_images, n_images * c, generator=generator), caption_to_image)
        i2t_all.append(i2t)
        t2i_all.append(t2i)
    measured = recall_metrics(torch.cat(i2t_all), torch.cat(t2i_all))
    chance = chance_metrics(n_images, c)
    for key in RECALL_KEYS:
        assert measured[key] == pytest.approx(chance[key], abs=2.0), key
    assert measured["i2t_meanr"] == pytest.approx(chance["i2t_meanr"], rel=0.05)
    assert measured["t2i_meanr"] == pytest.approx(chance["t2i_meanr"], rel=0.05)


def test_results_table_shows_both_directions_chance_and_rsum() -> None:
    metrics = evaluate_retrieval(HAND_SIMILARITY, HAND_CAPTION_TO_IMAGE)
    table = format_results_table(metrics, chance=chance_metrics(3, 2))
    lines = table.splitlines()
    assert lines[0].startswith("protocol: full (3 images, 6 captions)")
    header = lines[1].split()
    assert header == ["R@1", "R@5", "R@10", "medr", "meanr"]
    assert lines[2].split()[:2] == ["i2t", "33.3"]
    assert lines[3].split()[:2] == ["t2i", "66.7"]
    assert lines[4].startswith("chance i2t") and lines[5].startswith("chance t2i")
    assert lines[-1].startswith(f"rSum: {metrics['rsum']:.1f}  (chance")
    assert len({len(line) for line in lines[1:6]}) == 1  # aligned columns
    assert "chance" not in format_results_table(metrics)


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape mismatch: similarity has 6 caption columns"):
        retrieval_ranks(torch.zeros(3, 6), torch.tensor([0, 0, 1, 1, 2]))


def test_similarity_that_is_not_a_matrix_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected shape \(n_images, n_captions\)"):
        retrieval_ranks(torch.zeros(6), torch.tensor([0, 0, 1, 1, 2, 2]))


def test_image_without_a_caption_is_rejected() -> None:
    with pytest.raises(ValueError, match="image row 1 has no caption"):
        retrieval_ranks(torch.zeros(3, 4), torch.tensor([0, 0, 2, 2]))


@pytest.mark.parametrize("bad_image", [-1, 3])
def test_caption_to_image_out_of_range_is_rejected(bad_image: int) -> None:
    with pytest.raises(ValueError, match=rf"caption 2 maps to image {bad_image}, expected a row in \[0, 3\)"):
        retrieval_ranks(torch.zeros(3, 4), torch.tensor([0, 1, bad_image, 2]))


def test_non_integer_caption_to_image_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected an integer dtype"):
        retrieval_ranks(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))


def test_nan_in_similarity_is_rejected_with_its_row() -> None:
    similarity, caption_to_image = perfect_similarity(6, 2)
    similarity[4, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN .*image row 4"):
        retrieval_ranks(similarity, caption_to_image, chunk_size=2)


def test_caption_count_breaking_the_protocol_names_the_first_offending_image() -> None:
    caption_to_image = torch.tensor([0] * 5 + [1] * 4 + [2] * 6)
    with pytest.raises(ValueError, match=r"expected 5 captions per image .* image row 1 has 4"):
        evaluate_retrieval(torch.zeros(3, 15), caption_to_image, check_captions_per_image=5)
    evaluate_retrieval(torch.zeros(3, 15), caption_to_image)  # fine without the check


def test_folds_that_do_not_divide_the_images_are_rejected() -> None:
    similarity, caption_to_image = perfect_similarity(12, 5)
    with pytest.raises(ValueError, match="12 images do not split evenly into n_folds=5"):
        evaluate_retrieval(similarity, caption_to_image, protocol="coco_5fold_1k")


def test_unknown_protocol_is_rejected() -> None:
    similarity, caption_to_image = perfect_similarity(2, 5)
    with pytest.raises(ValueError, match="unknown protocol 'coco_1k'"):
        evaluate_retrieval(similarity, caption_to_image, protocol="coco_1k")


def test_chunk_size_below_one_is_rejected() -> None:
    similarity, caption_to_image = perfect_similarity(2, 5)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, found 0"):
        retrieval_ranks(similarity, caption_to_image, chunk_size=0)
