"""ECCV Caption / CxC metrics: the package's real COCO id mappings, similarity matrices with known
answers, and agreement with the package's own `compute_all_metrics` on full ranked lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

eccv_caption = pytest.importorskip("eccv_caption")

from modeling_ccr.metrics.eccv import EccvError, eccv_metrics, pessimistic_scores  # noqa: E402


@pytest.fixture(scope="module")
def package():
    return eccv_caption.Metrics()


@pytest.fixture(scope="module")
def karpathy_5k(package):
    """The COCO Karpathy 5K test as the package maps it: image ids and their 5 COCO caption ids each."""
    image_ids = sorted(package.coco_gts["i2t"])
    caption_ids = [c for image in image_ids for c in package.coco_gts["i2t"][image]]
    caption_to_image = np.repeat(np.arange(len(image_ids)), 5)
    return image_ids, caption_ids, caption_to_image


def small_split(package, n_images: int = 60):
    """The first `n_images` ECCV query images (sorted ids) with their own COCO captions: a subset."""
    image_ids = sorted(package.eccv_gts["i2t"])[:n_images]
    caption_ids = [c for image in image_ids for c in package.coco_gts["i2t"][image]]
    return image_ids, caption_ids, np.repeat(np.arange(n_images), 5)


def eccv_positive_mask(package, image_ids, caption_ids, direction: str) -> torch.Tensor:
    """`(n_images, n_captions)` True where the ECCV annotation says the pair matches, in one direction."""
    row = {image: i for i, image in enumerate(image_ids)}
    column = {caption: j for j, caption in enumerate(caption_ids)}
    mask = torch.zeros(len(image_ids), len(caption_ids), dtype=torch.bool)
    for query, positives in package.eccv_gts[direction].items():
        for positive in positives:
            image, caption = (query, positive) if direction == "i2t" else (positive, query)
            if image in row and caption in column:
                mask[row[image], column[caption]] = True
    return mask


def test_the_package_ships_the_eccv_and_cxc_positives_of_the_coco_5k_test(package, karpathy_5k):
    image_ids, caption_ids, _ = karpathy_5k
    assert len(image_ids) == 5000 and len(set(caption_ids)) == 25000
    assert len(package.eccv_gts["i2t"]) == 1261 and len(package.eccv_gts["t2i"]) == 1332
    assert set(package.eccv_gts["i2t"]) <= set(image_ids) and set(package.cxc_gts["i2t"]) == set(image_ids)


def test_pessimistic_scores_move_a_positive_below_tied_negatives_and_past_nothing_else():
    below_half = float(np.nextafter(np.float32(0.5), np.float32(0)))  # the float32 just below 0.5
    scores = torch.tensor([[-2.0, below_half, 0.5, 0.5, 3.0, 0.0]])
    positive = torch.tensor([[False, False, True, False, False, True]])
    order = torch.argsort(pessimistic_scores(scores, positive), descending=True)[0].tolist()
    assert order == [4, 3, 2, 1, 5, 0]


def test_scoring_exactly_the_eccv_positives_highest_gives_perfect_i2t_scores(package):
    image_ids, caption_ids, caption_to_image = small_split(package)
    positives = eccv_positive_mask(package, image_ids, caption_ids, "i2t")
    similarity = positives.float() + 0.5 * torch.rand(
        positives.shape, generator=torch.Generator().manual_seed(0)
    )
    scores = eccv_metrics(similarity, image_ids, caption_ids, caption_to_image, subset=True)
    assert scores["subset"] is True and scores["n_eccv_i2t_queries"] == 60
    for name in ("map_at_r", "rprecision", "r1"):
        assert scores[f"eccv_i2t_{name}"] == pytest.approx(100.0), name


def test_scoring_the_positives_lowest_gives_zero(package):
    image_ids, caption_ids, caption_to_image = small_split(package)
    positives = eccv_positive_mask(package, image_ids, caption_ids, "t2i")
    similarity = -positives.float() - 0.5 * torch.rand(
        positives.shape, generator=torch.Generator().manual_seed(1)
    )
    scores = eccv_metrics(similarity, image_ids, caption_ids, caption_to_image, subset=True)
    for name in ("map_at_r", "rprecision", "r1"):
        assert scores[f"eccv_t2i_{name}"] == 0.0, name


def test_a_constant_similarity_scores_zero_not_perfect(package):
    image_ids, caption_ids, caption_to_image = small_split(package)
    similarity = torch.ones(len(image_ids), len(caption_ids))
    scores = eccv_metrics(similarity, image_ids, caption_ids, caption_to_image, subset=True)
    for key in ("eccv_i2t_map_at_r", "eccv_t2i_r1", "cxc_i2t_r1", "cxc_t2i_r10"):
        assert scores[key] == 0.0, key


def test_one_negative_above_all_r_positives_gives_the_hand_computed_map_at_r(package):
    image_ids, caption_ids, caption_to_image = small_split(package)
    positives = eccv_positive_mask(package, image_ids, caption_ids, "i2t")
    similarity = positives.float()
    for row in range(len(image_ids)):  # one negative caption above every positive, for every query
        similarity[row, int(torch.nonzero(~positives[row])[0])] = 2.0
    scores = eccv_metrics(similarity, image_ids, caption_ids, caption_to_image, subset=True)
    # A query with R positives at ranks 2..R+1: precision@r counts only at positive ranks r >= 2,
    # where it is (r - 1) / r; R-Precision is (R - 1) / R; R@1 is 0.
    counts = positives.sum(dim=1).tolist()
    expected_map = np.mean([sum((r - 1) / r for r in range(2, n + 1)) / n for n in counts])
    assert scores["eccv_i2t_r1"] == 0.0
    assert scores["eccv_i2t_rprecision"] == pytest.approx(100 * np.mean([(n - 1) / n for n in counts]))
    assert scores["eccv_i2t_map_at_r"] == pytest.approx(100 * expected_map)


def full_ranked_lists(similarity: torch.Tensor, query_ids, gallery_ids, depth: int) -> dict[int, list[int]]:
    """Ranked gallery ids of every query by plain argsort (scores without ties), cut deeper than ours."""
    top = torch.topk(similarity, depth, dim=1).indices.numpy()
    gallery = np.asarray(gallery_ids)
    return {query: gallery[row].tolist() for query, row in zip(query_ids, top, strict=True)}


@pytest.mark.slow
def test_on_the_whole_5k_test_the_scores_equal_the_package_compute_all_metrics(package, karpathy_5k):
    image_ids, caption_ids, caption_to_image = karpathy_5k
    generator = torch.Generator().manual_seed(0)
    similarity = torch.rand(len(image_ids), len(caption_ids), generator=generator)
    # Make it a model worth scoring: each image's own captions get a boost, so scores are not all ~0.
    similarity[torch.as_tensor(caption_to_image), torch.arange(len(caption_ids))] += 0.9
    ours = eccv_metrics(similarity, image_ids, caption_ids, caption_to_image)
    reference = package.compute_all_metrics(
        full_ranked_lists(similarity, image_ids, caption_ids, 200),
        full_ranked_lists(similarity.T.contiguous(), caption_ids, image_ids, 200),
        target_metrics=("eccv_r1", "eccv_map_at_r", "eccv_rprecision", "cxc_recalls"),
        Ks=(1, 5, 10),
    )
    assert ours["subset"] is False
    assert ours["n_eccv_i2t_queries"] == 1261 and ours["n_eccv_t2i_queries"] == 1332
    assert ours["n_cxc_i2t_queries"] == 5000 and ours["n_cxc_t2i_queries"] == 24972
    for name in ("map_at_r", "rprecision", "r1"):
        for direction in ("i2t", "t2i"):
            assert ours[f"eccv_{direction}_{name}"] == pytest.approx(
                100 * reference[f"eccv_{name}"][direction]
            ), (name, direction)
    for k in (1, 5, 10):
        for direction in ("i2t", "t2i"):
            assert ours[f"cxc_{direction}_r{k}"] == pytest.approx(100 * reference[f"cxc_r{k}"][direction])
    assert 20 < ours["cxc_i2t_r1"] < 100 and 0 < ours["eccv_t2i_map_at_r"] < 100


def test_the_official_numbers_need_the_whole_5k_test(package):
    image_ids, caption_ids, caption_to_image = small_split(package)
    with pytest.raises(EccvError, match=r"whole COCO Karpathy 5K test; the split has 60 of its 5000 images"):
        eccv_metrics(torch.zeros(len(image_ids), len(caption_ids)), image_ids, caption_ids, caption_to_image)


def test_caption_ids_that_are_not_the_images_coco_captions_are_refused(package):
    image_ids, caption_ids, caption_to_image = small_split(package, 3)
    swapped = caption_ids[5:10] + caption_ids[:5] + caption_ids[10:]  # image 0 gets image 1's captions
    with pytest.raises(EccvError, match=rf"image {image_ids[0]} \(row 0\) has caption ids"):
        eccv_metrics(torch.zeros(3, 15), image_ids, swapped, caption_to_image, subset=True)


def test_a_split_without_coco_ids_is_refused_naming_the_column(tmp_path):
    import datasets

    from modeling_ccr.metrics.eccv import coco_ids

    split = datasets.Dataset.from_dict({"image_id": ["a.jpg"], "captions": [["x"]], "caption_ids": [["1"]]})
    with pytest.raises(EccvError, match=r"column 'image_id', row 0: expected a COCO id .* 'a\.jpg'"):
        coco_ids(split)
    with pytest.raises(EccvError, match="caption_ids"):
        coco_ids(split.remove_columns("caption_ids"))


def test_results_are_json_serialisable_percentages(package):
    image_ids, caption_ids, caption_to_image = small_split(package, 10)
    similarity = torch.rand(10, 50, generator=torch.Generator().manual_seed(2))
    scores = eccv_metrics(similarity, image_ids, caption_ids, caption_to_image, subset=True)
    assert json.loads(json.dumps(scores)) == scores
    assert all(0 <= v <= 100 for k, v in scores.items() if k.startswith(("eccv_", "cxc_")))
    assert scores["package"].startswith("eccv-caption ")


# -- ccr evaluate --protocol eccv, the results JSON and the card -------------------------------------------


@pytest.fixture(scope="module")
def coco_subset(package, tmp_path_factory):
    """A corpus of 40 ECCV query images of the COCO 5K test (real COCO image and caption ids; made-up
    features and captions) saved with save_to_disk, and an untrained tiny SCAN model for it."""
    import datasets

    from modeling_ccr.data.schema import corpus_features
    from modeling_ccr.text.tokenization import build_word_tokenizer
    from modeling_ccr.training.experiment import build_model

    folder = tmp_path_factory.mktemp("coco_subset")
    image_ids = sorted(package.eccv_gts["i2t"])[:40]
    rng = np.random.default_rng(0)
    words = ["a", "man", "dog", "on", "red", "bus", "grass", "with", "the", "street"]
    rows = {
        "image_id": [str(i) for i in image_ids],
        "features": [rng.standard_normal((4, 8)).astype(np.float32) for _ in image_ids],
        "image_size": [[640, 480]] * len(image_ids),
        "captions": [[" ".join(rng.choice(words, 5)) for _ in range(5)] for _ in image_ids],
        "caption_ids": [[str(c) for c in package.coco_gts["i2t"][i]] for i in image_ids],
    }
    split = datasets.Dataset.from_dict(
        rows, features=corpus_features(8, with_boxes=False, with_phrases=False, with_caption_ids=True)
    )
    datasets.DatasetDict({"test": split}).save_to_disk(str(folder / "corpus"))
    tokenizer = build_word_tokenizer(words, 1)
    model = build_model({"backbone": "scan", "embed_dim": 8, "word_dim": 8}, tokenizer, 8, "test")
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder


def test_ccr_evaluate_protocol_eccv_writes_eccv_and_cxc_beside_r_at_k(coco_subset, capsys):
    from modeling_ccr.cli import main

    output = coco_subset / "eval_results_test.json"
    argv = ["evaluate", str(coco_subset / "model"), "--dataset", str(coco_subset / "corpus")]
    assert main([*argv, "--protocol", "eccv", "--eccv-subset", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert (
        "ECCV Caption and CxC (eccv-caption 0.1.0; a SUBSET of the COCO 5K test, not the published" in printed
    )
    metrics = json.loads(output.read_text())["metrics"]
    assert metrics["protocol"] == "full" and metrics["n_images"] == 40 and "rsum" in metrics
    assert metrics["eccv"]["subset"] is True and metrics["eccv"]["n_eccv_i2t_queries"] == 40
    assert 0 <= metrics["eccv"]["eccv_t2i_map_at_r"] <= 100


def test_without_subset_ccr_evaluate_refuses_a_partial_5k_test_in_one_line(coco_subset, capsys):
    from modeling_ccr.cli import main

    argv = ["evaluate", str(coco_subset / "model"), "--dataset", str(coco_subset / "corpus")]
    assert main([*argv, "--protocol", "eccv", "--output", str(coco_subset / "x.json")]) == 2
    error = capsys.readouterr().err
    assert "encode images" not in error, "the split is checked before anything is scored"
    assert error.strip().splitlines()[-1].startswith("ccr evaluate: error:")
    assert "has 40 of its 5000 images" in error.strip().splitlines()[-1]
    assert not (coco_subset / "x.json").exists()


def test_the_card_shows_the_eccv_table_and_its_model_index_carries_each_number(coco_subset):
    from huggingface_hub import ModelCard

    from modeling_ccr.cli import main
    from modeling_ccr.hub.cards import CardSources, render_model_card

    output = coco_subset / "model" / "eval_results_test.json"
    argv = ["evaluate", str(coco_subset / "model"), "--dataset", str(coco_subset / "corpus")]
    assert main([*argv, "--protocol", "eccv", "--eccv-subset", "--output", str(output)]) == 0
    eccv = json.loads(output.read_text())["metrics"]["eccv"]
    texts = {name: (coco_subset / "model" / name).read_text() for name in ("config.json", output.name)}
    card = ModelCard(render_model_card(CardSources.from_texts(texts, list(texts)), "org/x").content)
    assert "**scored on a subset of the COCO 5K test, not the published benchmark**" in card.text
    assert f"| t2i | {eccv['eccv_t2i_map_at_r']:.2f} |" in card.text
    parsed = {r.metric_type: r for r in card.data.eval_results if r.metric_config == "eccv_caption_subset"}
    assert len(parsed) == 12
    assert parsed["eccv_map_at_r_i2t"].metric_value == eccv["eccv_i2t_map_at_r"]
    assert parsed["cxc_r10_t2i"].metric_value == eccv["cxc_t2i_r10"]
