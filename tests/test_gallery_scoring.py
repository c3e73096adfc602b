"""The fast all-pairs cross-attention scorer (Gram trick, unnormalised weights, tiles, length groups)
against the independent pair-by-pair references of tests/references.py, for every option combination."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from references import reference_scores

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.models import gallery_scoring
from modeling_ccr.models.configuration_bfan import BfanConfig
from modeling_ccr.models.cross_attention import CrossAttentionSpec, cross_attention_scores
from modeling_ccr.models.gallery_scoring import caption_length_groups, tile_budget, tile_shape
from modeling_ccr.models.modeling_bfan import BfanModel

TINY = dict(feature_dim=12, embed_dim=32, vocab_size=40, word_dim=6)
FP32_TOLERANCE = 1e-5
# bf16 products (8 mantissa bits) on l2-normalised embeddings: the stated tolerance of docs/scoring.md.
BF16_TOLERANCE = 2e-2
SCAN_OPTIONS = list(
    itertools.product(
        ("t2i", "i2t"), ("avg", "lse", "max", "sum"), ("clipped_l2norm", "l2norm", "softmax", "none")
    )
)
BFAN_OPTIONS = list(
    itertools.product(("equal", "prob"), ("both", "t2i", "i2t"), ("clipped_l2norm", "softmax"))
)


def gallery(n_images=3, n_regions=7, n_captions=5, n_words=6, dim=32, seed=0, shortest=1):
    """l2-normalised random embeddings with ragged masks; padded rows hold garbage that must be ignored.

    One image and one caption have `shortest` valid items (regions / words)."""
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n_images, n_regions, dim, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(n_captions, n_words, dim, generator=generator), dim=-1)
    region_mask = torch.ones(n_images, n_regions, dtype=torch.bool)
    region_mask[1, 4:] = False
    region_mask[2, shortest:] = False
    word_mask = torch.ones(n_captions, n_words, dtype=torch.bool)
    for caption, length in enumerate((6, 3, shortest, 5, 3)[:n_captions]):
        word_mask[caption, length:] = False
    images = torch.where(region_mask[..., None], images, 7.0)
    texts = torch.where(word_mask[..., None], texts, -3.0)
    return images, region_mask, texts, word_mask


def assert_matches_reference(name, model, inputs, tolerance=FP32_TOLERANCE):
    scores = model.similarity(*inputs)
    expected = reference_scores(
        name, model.double(), *(t.double() if t.is_floating_point() else t for t in inputs)
    )
    assert scores.dtype == torch.float32
    assert (scores.double() - expected).abs().max() <= tolerance


@pytest.mark.parametrize(("direction", "aggregation", "norm"), SCAN_OPTIONS)
def test_scan_gallery_scores_equal_the_reference_within_1e_5(direction, aggregation, norm):
    config = ScanConfig(**TINY, direction=direction, aggregation=aggregation, attention_norm=norm)
    assert_matches_reference("scan", ScanModel(config).eval(), gallery())


@pytest.mark.parametrize(("focal", "direction", "norm"), BFAN_OPTIONS)
def test_bfan_gallery_scores_equal_the_reference_within_1e_5(focal, direction, norm):
    config = BfanConfig(**TINY, focal=focal, direction=direction, attention_norm=norm)
    # With one query, the l2 norm over queries sends every key's score to +-1 (up to the norm's epsilon):
    # the focal decisions become ties that rounding decides, in any precision. Items have >= 2 queries.
    assert_matches_reference("bfan", BfanModel(config).eval(), gallery(shortest=2))


@pytest.mark.parametrize("lambda_softmax", [1.0, 20.0, 60.0])
def test_scores_are_exact_with_and_without_the_fixed_softmax_shift(lambda_softmax):
    # lambda1 * range <= 40 takes the fixed shift; 60 * 2 > 40 takes the per-query maximum.
    config = ScanConfig(**TINY, lambda_softmax=lambda_softmax)
    assert_matches_reference("scan", ScanModel(config).eval(), gallery())


@pytest.mark.parametrize("tile_elements", [1, 40, 300, 10**6])
@pytest.mark.parametrize("directions", [("t2i",), ("i2t",), ("t2i", "i2t")])
def test_tile_size_does_not_change_the_scores(tile_elements, directions):
    inputs = gallery(n_images=3, n_captions=5)
    rule = CrossAttentionSpec(20.0, "clipped_l2norm", focal="prob")
    one_tile = cross_attention_scores(*inputs, directions, rule, tile_elements=10**9)
    tiled = cross_attention_scores(*inputs, directions, rule, tile_elements=tile_elements)
    torch.testing.assert_close(tiled, one_tile, rtol=0, atol=1e-6)


def test_tiles_cover_the_budget_and_never_exceed_the_gallery():
    assert tile_shape(1000, 36, 5000, 15, budget=10**6) == (27, 68)
    assert tile_shape(2, 36, 3, 15, budget=10**9) == (2, 3)
    assert tile_shape(5, 36, 5, 15, budget=1) == (1, 1)


def test_the_cpu_tile_budget_is_the_cache_share_capped_by_free_memory(monkeypatch):
    import modeling_ccr.models.gallery_scoring as scoring

    per_element = scoring.LIVE_TILE_TENSORS * 4
    monkeypatch.setattr(scoring, "cache_bytes", lambda: 8 * 2**20)
    monkeypatch.setattr(scoring, "available_memory_bytes", lambda device: 2**40)
    assert tile_budget(torch.device("cpu")) == 8 * 2**20 // per_element
    monkeypatch.setattr(scoring, "available_memory_bytes", lambda device: 10**6)
    assert tile_budget(torch.device("cpu")) == int(10**6 * scoring.MEMORY_SHARE) // per_element
    monkeypatch.setattr(scoring, "available_memory_bytes", lambda device: 0)
    assert tile_budget(torch.device("cpu")) == 1


def test_caption_length_groups_cover_every_caption_once_at_its_own_length():
    word_mask = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool
    )
    groups = caption_length_groups(word_mask)
    assert [(g.tolist(), length) for g, length in groups] == [([2], 1), ([0, 3], 2), ([4], 3), ([1], 4)]


@pytest.mark.parametrize("name", ["scan", "bfan"])
def test_bf16_gallery_scores_are_within_the_stated_tolerance(name):
    model = ScanModel(ScanConfig(**TINY)) if name == "scan" else BfanModel(BfanConfig(**TINY))
    inputs = gallery(n_images=4, n_regions=12, n_captions=5, n_words=6, dim=64)
    exact = model.similarity(*inputs)
    low = model.similarity(*inputs, dtype=torch.bfloat16)
    error = (low - exact).abs().max()
    assert 0 < error <= BF16_TOLERANCE  # it did run in bf16, and stayed within the tolerance


@pytest.mark.parametrize(("direction", "norm"), [("t2i", "clipped_l2norm"), ("i2t", "softmax")])
def test_training_gradients_equal_the_reference_gradients(direction, norm):
    config = ScanConfig(**TINY, direction=direction, attention_norm=norm, aggregation="lse")
    model = ScanModel(config).double()
    images, region_mask, texts, word_mask = (t.double() if t.is_floating_point() else t for t in gallery())
    grads = []
    for score in (model.score_pairs, lambda *a: reference_scores("scan", model, *a)):
        leaves = (images.clone().requires_grad_(), texts.clone().requires_grad_())
        weights = torch.linspace(-1, 1, 15, dtype=torch.float64).view(3, 5)
        (score(leaves[0], region_mask, leaves[1], word_mask) * weights).sum().backward()
        grads.append(
            [leaf.grad * mask[..., None] for leaf, mask in zip(leaves, (region_mask, word_mask), strict=True)]
        )
    for fast, reference in zip(*grads, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-7, atol=1e-9)


# -- thread count from the free cores ------------------------------------------------------------------


def write_stat(path, cpus):
    """A /proc/stat with the given (idle, busy) jiffies per CPU (idle split into idle and iowait)."""
    lines = ["cpu  1 2 3 4 5 6 7 8 9 10"]
    lines += [f"cpu{i} {busy} 0 0 {idle - 1} 1 0 0 0 0 0" for i, (idle, busy) in enumerate(cpus)]
    path.write_text("\n".join([*lines, "intr 5 0", "ctxt 7"]) + "\n")


def test_cpu_times_reads_idle_and_total_jiffies_per_cpu(tmp_path):
    stat = tmp_path / "stat"
    write_stat(stat, [(100, 50), (10, 140)])
    assert gallery_scoring.cpu_times(str(stat)) == {0: (100, 150), 1: (10, 150)}
    assert gallery_scoring.cpu_times(str(tmp_path / "missing")) == {}


def test_free_cores_is_the_idle_share_of_the_allowed_cpus_while_this_process_sleeps(monkeypatch):
    samples = iter([{0: (0, 0), 1: (0, 0), 2: (0, 0)}, {0: (100, 100), 1: (25, 100), 2: (100, 100)}])
    monkeypatch.setattr(gallery_scoring, "cpu_times", lambda: next(samples))
    monkeypatch.setattr(gallery_scoring, "allowed_cpus", lambda: {0, 1})  # cpu 2 is not ours
    assert gallery_scoring.free_cores(window=0) == pytest.approx(1.25)


@pytest.mark.parametrize(
    ("free", "requested", "expected"), [(0.0, 2, 1), (1.4, 4, 1), (1.6, 4, 2), (3.9, 2, 2)]
)
def test_scoring_threads_round_the_free_cores_within_one_and_the_request(
    monkeypatch, free, requested, expected
):
    monkeypatch.setattr(gallery_scoring, "free_cores", lambda: free)
    monkeypatch.setattr(gallery_scoring, "_free_core_sample", [])
    assert gallery_scoring.scoring_threads(requested) == expected


def test_free_core_threads_sets_and_restores_the_thread_count_and_keeps_the_scores(monkeypatch):
    monkeypatch.setattr(gallery_scoring, "free_cores", lambda: 1.0)
    monkeypatch.setattr(gallery_scoring, "_free_core_sample", [])
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = ScanModel(ScanConfig(**TINY)).eval()
        inputs = gallery()
        expected = model.similarity(*inputs)
        with gallery_scoring.free_core_threads(torch.device("cpu")) as threads:
            assert threads == 1 and torch.get_num_threads() == 1
            scores = model.similarity(*inputs)
        assert torch.get_num_threads() == 2
        torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
        with gallery_scoring.free_core_threads(torch.device("cuda")) as threads:
            assert threads == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
