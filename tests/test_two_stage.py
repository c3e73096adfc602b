"""Two-stage retrieval: first-stage shortlist, batched exact re-ranking by the cross-attention model."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.evaluation.two_stage import (
    RerankError,
    caption_lengths,
    pooled_embeddings,
    rerank_pair_scores,
    rerank_rows,
    rerank_shortlists,
    shortlist,
    shortlisted_pairs,
    two_stage_similarity,
)
from modeling_ccr.metrics.retrieval import evaluate_retrieval, retrieval_ranks
from modeling_ccr.models.configuration_bfan import BfanConfig
from modeling_ccr.models.configuration_damsm import DamsmConfig
from modeling_ccr.models.configuration_dvsa import DvsaConfig
from modeling_ccr.models.configuration_sgraf import SafConfig, SgrConfig
from modeling_ccr.models.modeling_bfan import BfanModel
from modeling_ccr.models.modeling_damsm import DamsmModel
from modeling_ccr.models.modeling_dvsa import DvsaModel
from modeling_ccr.models.modeling_sgraf import SafModel, SgrModel

N_REGIONS = 5
TINY = {"feature_dim": 8, "embed_dim": 16, "vocab_size": 30, "word_dim": 4}
BACKBONES = {
    "scan_t2i": lambda: ScanModel(ScanConfig(**TINY)),
    "scan_i2t_lse": lambda: ScanModel(ScanConfig(**TINY, direction="i2t", aggregation="lse")),
    "scan_softmax_max": lambda: ScanModel(ScanConfig(**TINY, attention_norm="softmax", aggregation="max")),
    "bfan": lambda: BfanModel(BfanConfig(**TINY)),
    "bfan_prob": lambda: BfanModel(BfanConfig(**TINY, focal="prob")),
    "damsm": lambda: DamsmModel(DamsmConfig(**TINY)),
    "sgr": lambda: SgrModel(SgrConfig(**TINY, n_regions=N_REGIONS, sim_dim=8)),
    "saf": lambda: SafModel(SafConfig(**TINY, n_regions=N_REGIONS, sim_dim=8)),
    "dvsa": lambda: DvsaModel(DvsaConfig(**TINY)),
}


def gallery(n_images=6, n_captions=9, n_regions=N_REGIONS, n_words=7, dim=16, seed=0):
    """Ragged masks, and garbage (not zeros) in padded word rows: scoring must not read them."""
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n_images, n_regions, dim, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(n_captions, n_words, dim, generator=generator), dim=-1)
    region_mask = torch.ones(n_images, n_regions, dtype=torch.bool)
    region_mask[0, 3:] = False
    region_mask[2, 1:] = False
    word_mask = torch.arange(n_words)[None, :] < torch.randint(
        1, n_words + 1, (n_captions, 1), generator=generator
    )
    texts = torch.where(word_mask[..., None], texts, 0.5)
    return images, region_mask, texts, word_mask


def build(name):
    torch.manual_seed(0)
    return BACKBONES[name]().eval()


@pytest.fixture
def model():
    return build("scan_t2i")


@pytest.mark.parametrize("name", BACKBONES)
def test_with_k_at_least_the_gallery_size_two_stage_equals_exact_scoring(name):
    model, inputs = build(name), gallery()
    torch.testing.assert_close(two_stage_similarity(model, *inputs, k=9), model.similarity(*inputs))


@pytest.mark.parametrize("name", BACKBONES)
def test_batched_pair_scores_equal_exact_scores_over_many_small_tiles(name):
    model, inputs = build(name), gallery(n_images=7, n_captions=23, n_words=9, seed=3)
    exact = model.similarity(*inputs)
    pairs = torch.randperm(7 * 23, generator=torch.Generator().manual_seed(4))[:100]
    images, captions = pairs // 23, pairs % 23
    # A budget of a few rows per tile: many tiles of mixed widths and lengths.
    scores = rerank_pair_scores(model, *inputs, images, captions, tile_elements=400)
    torch.testing.assert_close(scores, exact[images, captions], rtol=1e-5, atol=1e-6)


def per_image_rerank(model, inputs, rerank):
    """The previous re-ranking: one `model.similarity` call per image on its shortlisted captions."""
    image_embeds, region_mask, text_embeds, word_mask = inputs
    exact = torch.full(rerank.shape, float("nan"))
    for image in range(rerank.shape[0]):
        columns = rerank[image].nonzero().squeeze(1)
        exact[image, columns] = model.similarity(
            image_embeds[image : image + 1],
            region_mask[image : image + 1],
            text_embeds[columns],
            word_mask[columns],
        )[0]
    return exact


@pytest.mark.parametrize("name", ["scan_t2i", "sgr"])
def test_batched_reranking_equals_per_image_reranking(name):
    model, inputs = build(name), gallery(n_images=8, n_captions=30, n_words=9, seed=5)
    images, captions = pooled_embeddings(*inputs[:2]), pooled_embeddings(*inputs[2:])
    rerank = shortlisted_pairs(images, captions, k=4)
    assert not rerank.all()
    expected = per_image_rerank(model, inputs, rerank)
    scores = two_stage_similarity(model, *inputs, k=4)
    torch.testing.assert_close(scores[rerank], expected[rerank], rtol=1e-5, atol=1e-6)


def test_rows_hold_every_pair_once_with_one_image_per_row():
    generator = torch.Generator().manual_seed(6)
    images, captions = (
        torch.randint(0, 5, (200,), generator=generator),
        torch.randint(0, 40, (200,), generator=generator),
    )
    lengths = torch.randint(1, 30, (40,), generator=generator)
    rows = rerank_rows(images, captions, lengths, width=4)
    used = rows.pairs >= 0
    assert sorted(rows.pairs[used].tolist()) == list(range(200))
    pair_rows = torch.arange(len(rows.images))[:, None].expand_as(rows.pairs)[used]
    assert torch.equal(rows.images[pair_rows], images[rows.pairs[used]])
    assert torch.equal(rows.captions[used], captions[rows.pairs[used]])
    assert torch.equal(rows.fill, used.sum(dim=1))
    assert (rows.length >= lengths[rows.captions].where(used, 0).amax(dim=1)).all()


def test_caption_lengths_are_one_past_the_last_valid_token():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert caption_lengths(mask).tolist() == [2, 3, 4]


def test_shortlisted_pairs_get_exact_scores_and_the_rest_rank_below_in_first_stage_order(model):
    inputs = gallery()
    k = 3
    scores, exact = two_stage_similarity(model, *inputs, k=k), model.similarity(*inputs)
    images, captions = pooled_embeddings(*inputs[:2]), pooled_embeddings(*inputs[2:])
    shortlisted = shortlisted_pairs(images, captions, k)
    assert shortlisted.sum(dim=1).min() >= k and not shortlisted.all()
    torch.testing.assert_close(scores[shortlisted], exact[shortlisted])
    # Each image's top k and each caption's top k come from the model's exact scores.
    assert shortlisted.gather(1, scores.topk(k, dim=1).indices).all()
    assert shortlisted.T.gather(1, scores.T.topk(k, dim=1).indices).all()
    assert scores[~shortlisted].max() < scores[shortlisted].min()
    first_stage = (images @ captions.T)[~shortlisted]
    assert torch.equal(scores[~shortlisted].argsort(), first_stage.argsort())


def test_given_global_embeddings_choose_the_shortlist(model):
    inputs = gallery()
    generator = torch.Generator().manual_seed(7)
    global_images, global_captions = (
        torch.randn(6, 4, generator=generator),
        torch.randn(9, 4, generator=generator),
    )
    scores = two_stage_similarity(model, *inputs, k=2, global_embeds=(global_images, global_captions))
    expected = shortlisted_pairs(F.normalize(global_images, dim=-1), F.normalize(global_captions, dim=-1), 2)
    assert expected.sum() < 54
    assert torch.equal(scores >= scores[expected].min(), expected)


def test_global_embeddings_of_the_wrong_size_are_a_user_error(model):
    with pytest.raises(RerankError, match="expected 6 image and 9 caption rows, found 5 and 9"):
        two_stage_similarity(model, *gallery(), k=2, global_embeds=(torch.randn(5, 4), torch.randn(9, 4)))


def test_an_image_search_function_gives_the_captions_their_images(model):
    inputs = gallery()
    images, captions = pooled_embeddings(*inputs[:2]), pooled_embeddings(*inputs[2:])
    # A search that returns image 1 for every caption (and -1, a missing neighbour).
    search = lambda queries, k: torch.tensor([[1, -1]]).expand(queries.shape[0], 2)  # noqa: E731
    rerank = shortlisted_pairs(images, captions, 2, image_search=search)
    expected = torch.zeros(6, 9, dtype=torch.bool)
    expected.scatter_(1, shortlist(images, captions, 2), True)
    expected[1] = True
    assert torch.equal(rerank, expected)


def test_rerank_shortlists_scores_each_querys_candidates(model):
    inputs = gallery()
    exact = model.similarity(*inputs)
    candidates = torch.tensor([[0, 5, -1], [2, 2, 1]])
    by_caption = rerank_shortlists(model, *inputs, candidates, queries="captions")
    assert torch.equal(by_caption[0, 2], torch.tensor(float("-inf")))
    torch.testing.assert_close(by_caption[0, :2], exact[[0, 5], 0])
    torch.testing.assert_close(by_caption[1], exact[[2, 2, 1], 1])
    by_image = rerank_shortlists(model, *inputs, candidates.clamp_min(0), queries="images")
    torch.testing.assert_close(by_image[1], exact[1, [2, 2, 1]])
    with pytest.raises(RerankError, match="queries must be 'captions' or 'images', got 'words'"):
        rerank_shortlists(model, *inputs, candidates, queries="words")


def test_shortlist_is_the_top_k_inner_products():
    generator = torch.Generator().manual_seed(1)
    queries, items = torch.randn(4, 8, generator=generator), torch.randn(20, 8, generator=generator)
    expected = (queries @ items.T).topk(5).indices
    assert torch.equal(shortlist(queries, items, 5), expected)
    assert shortlist(queries, items, 50).shape == (4, 20)


def test_a_non_positive_k_is_a_user_error(model):
    with pytest.raises(RerankError, match="--rerank-k must be a positive number of candidates, got 0"):
        two_stage_similarity(model, *gallery(), k=0)


def test_exact_scoring_and_batched_reranking_run_on_the_free_cores(model, monkeypatch):
    """Both loops run under `free_core_threads`: with one core free, every product runs on one thread."""
    from modeling_ccr.evaluation import two_stage
    from modeling_ccr.models import gallery_scoring

    monkeypatch.setattr(gallery_scoring, "scoring_threads", lambda threads=None: 1)
    seen = []

    def recorded(function):
        def call(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(model, "score_pairs", recorded(model.score_pairs))
    row_score = two_stage.CrossAttentionRowScorer.score
    monkeypatch.setattr(
        two_stage.CrossAttentionRowScorer, "score", lambda self, *a: recorded(row_score)(self, *a)
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inputs = gallery()
        model.similarity(*inputs)
        exact_calls = len(seen)
        two_stage_similarity(model, *inputs, k=2)
        assert torch.get_num_threads() == 2  # restored after each loop
    finally:
        torch.set_num_threads(previous)
    assert exact_calls and len(seen) > exact_calls and set(seen) == {1}


# -- benchmarks/two_stage_curve.py --query-sample: each sampled query ranked against the whole gallery ----


@pytest.fixture(scope="module")
def curve_script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "two_stage_curve.py"
    spec = importlib.util.spec_from_file_location("two_stage_curve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sampled_gallery():
    """8 images x 40 captions, 5 captions an image (caption j of image j // 5)."""
    return gallery(n_images=8, n_captions=40, n_words=9, seed=8), torch.arange(40) // 5


def mean_stage(inputs):
    return lambda: (pooled_embeddings(*inputs[:2]), pooled_embeddings(*inputs[2:]))


def test_a_sample_of_every_query_gives_the_unsampled_numbers(curve_script, model):
    inputs, caption_to_image = sampled_gallery()
    captions, images = curve_script.query_sample(8, 40, 40, seed=3)
    assert torch.equal(captions, torch.arange(40)) and torch.equal(images, torch.arange(8))
    exact = model.similarity(*inputs)
    sampled = curve_script.sampled_exact(model, inputs, captions, images)
    full_metrics = evaluate_retrieval(exact, caption_to_image, protocol="full")
    metrics = curve_script.sampled_metrics(sampled, caption_to_image, captions, images)
    assert metrics == {key: full_metrics[key] for key in metrics}
    for k in (2, 3, 5):
        stage = mean_stage(inputs)
        scores = two_stage_similarity(model, *inputs, k, global_embeds=stage())
        phases = {}
        columns, rows = curve_script.sampled_two_stage(model, inputs, k, stage, captions, images, phases)
        assert phases["pairs"] == int(shortlisted_pairs(*stage(), k).sum())
        assert torch.equal(columns, scores) and torch.equal(rows, scores)
        expected = evaluate_retrieval(scores, caption_to_image, protocol="full")
        got = curve_script.sampled_metrics((columns, rows), caption_to_image, captions, images)
        assert got == {key: expected[key] for key in got}


def test_sampled_queries_keep_their_whole_gallery_ranks(curve_script, model):
    inputs, caption_to_image = sampled_gallery()
    captions, images = curve_script.query_sample(8, 40, 15, seed=3)
    assert (len(captions), len(images)) == (15, 3)
    assert torch.equal(captions, curve_script.query_sample(8, 40, 15, seed=3)[0])
    assert not torch.equal(captions, curve_script.query_sample(8, 40, 15, seed=4)[0])
    exact = model.similarity(*inputs)
    i2t, t2i = retrieval_ranks(exact, caption_to_image)
    sampled = curve_script.sampled_exact(model, inputs, captions, images)
    sampled_i2t, sampled_t2i = curve_script.sampled_ranks(*sampled, caption_to_image, captions, images)
    assert torch.equal(sampled_i2t, i2t[images]) and torch.equal(sampled_t2i, t2i[captions])
    stage = mean_stage(inputs)
    for k in (2, 3):
        full = two_stage_similarity(model, *inputs, k, global_embeds=stage())
        i2t, t2i = retrieval_ranks(full, caption_to_image)
        phases = {}
        columns, rows = curve_script.sampled_two_stage(model, inputs, k, stage, captions, images, phases)
        # The sampled queries' re-ranked pairs are those of the whole-gallery shortlist: both directions.
        rerank = shortlisted_pairs(*stage(), k)
        assert phases["pairs"] == int(
            rerank[:, captions].sum() + rerank[images].sum() - rerank[images][:, captions].sum()
        )
        assert phases["pairs"] < int(rerank.sum())
        sampled_i2t, sampled_t2i = curve_script.sampled_ranks(
            columns, rows, caption_to_image, captions, images
        )
        assert torch.equal(sampled_i2t, i2t[images]) and torch.equal(sampled_t2i, t2i[captions])
        # Re-ranked entries are the model's scores (the rest are shifted by the sample's lowest one).
        torch.testing.assert_close(columns[rerank[:, captions]], full[:, captions][rerank[:, captions]])
        torch.testing.assert_close(rows[rerank[images]], full[images][rerank[images]])


def test_a_query_sample_larger_than_the_captions_is_refused(curve_script):
    with pytest.raises(SystemExit, match="--query-sample: expected 1 to 40 caption queries, found 41"):
        curve_script.query_sample(8, 40, 41)


def test_the_sampled_curve_prints_every_row_with_its_time_split(curve_script, model, capsys):
    import argparse

    inputs, caption_to_image = sampled_gallery()
    args = argparse.Namespace(query_sample=15, sample_seed=0, repeats=1, ks=[2, 3])
    curve_script.sampled_curve(model, inputs, caption_to_image, {"mean-pooled": mean_stage(inputs)}, args)
    out = capsys.readouterr().out
    assert "15 caption queries (t2i, against all 8 images) and 3 image queries" in out
    assert "exact scoring of the sample: 240 pairs" in out  # 8 x 15 + 3 x 40
    labels = [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ")]
    assert labels == [
        "| setting",
        "| exact",
        "| first stage: mean-pooled",
        "| mean-pooled, k = 2",
        "| mean-pooled, k = 3",
        "| setting",
        "| mean-pooled, k = 2",
        "| mean-pooled, k = 3",
    ]
