"""Two-stage retrieval: pooled-embedding shortlist, exact re-ranking by the cross-attention model."""

import pytest
import torch
import torch.nn.functional as F

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.evaluation.two_stage import (
    RerankError,
    faiss_index,
    pooled_embeddings,
    shortlist,
    two_stage_similarity,
)


def gallery(n_images=6, n_captions=9, n_regions=5, n_words=7, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n_images, n_regions, dim, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(n_captions, n_words, dim, generator=generator), dim=-1)
    region_mask = torch.ones(n_images, n_regions, dtype=torch.bool)
    region_mask[0, 3:] = False
    word_mask = torch.arange(n_words)[None, :] < torch.randint(
        2, n_words + 1, (n_captions, 1), generator=generator
    )
    return images, region_mask, texts * word_mask[..., None], word_mask


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ScanModel(ScanConfig(feature_dim=8, embed_dim=16, vocab_size=30, word_dim=4)).eval()


def test_with_k_at_least_the_gallery_size_two_stage_equals_exact_scoring(model):
    inputs = gallery()
    torch.testing.assert_close(two_stage_similarity(model, *inputs, k=9), model.similarity(*inputs))


def test_shortlisted_pairs_get_exact_scores_and_the_rest_rank_below_in_first_stage_order(model):
    inputs = gallery()
    k = 3
    scores, exact = two_stage_similarity(model, *inputs, k=k), model.similarity(*inputs)
    images, captions = pooled_embeddings(*inputs[:2]), pooled_embeddings(*inputs[2:])
    shortlisted = torch.zeros(6, 9, dtype=torch.bool)
    shortlisted.scatter_(1, shortlist(images, captions, k), True)
    shortlisted.T.scatter_(1, shortlist(captions, images, k), True)
    assert shortlisted.sum(dim=1).min() >= k and not shortlisted.all()
    torch.testing.assert_close(scores[shortlisted], exact[shortlisted])
    # Each image's top k and each caption's top k come from the model's exact scores.
    assert shortlisted.gather(1, scores.topk(k, dim=1).indices).all()
    assert shortlisted.T.gather(1, scores.T.topk(k, dim=1).indices).all()
    assert scores[~shortlisted].max() < scores[shortlisted].min()
    first_stage = (images @ captions.T)[~shortlisted]
    assert torch.equal(scores[~shortlisted].argsort(), first_stage.argsort())


def test_shortlist_is_the_top_k_inner_products():
    generator = torch.Generator().manual_seed(1)
    queries, items = torch.randn(4, 8, generator=generator), torch.randn(20, 8, generator=generator)
    expected = (queries @ items.T).topk(5).indices
    assert torch.equal(shortlist(queries, items, 5), expected)
    assert shortlist(queries, items, 50).shape == (4, 20)


def test_faiss_index_returns_the_same_shortlist_when_installed():
    pytest.importorskip("faiss")
    generator = torch.Generator().manual_seed(2)
    queries, items = torch.randn(4, 8, generator=generator), torch.randn(30, 8, generator=generator)
    found = torch.from_numpy(faiss_index(items).search(queries.numpy(), 5)[1])
    assert torch.equal(found, (queries @ items.T).topk(5).indices)


def test_a_non_positive_k_is_a_user_error(model):
    with pytest.raises(RerankError, match="--rerank-k must be a positive number of candidates, got 0"):
        two_stage_similarity(model, *gallery(), k=0)
