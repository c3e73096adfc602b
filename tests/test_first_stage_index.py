"""The first stage's faiss index: flat for small galleries, IVF sized from the gallery, saved and reloaded."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("faiss")

from modeling_ccr.evaluation.index import (
    META_FILE,
    GalleryIndex,
    GalleryIndexError,
    index_parameters,
    load_embeddings,
    save_embeddings,
    shortlist_recall,
)
from modeling_ccr.evaluation.two_stage import shortlist, shortlisted_pairs


def clustered(n_items=3000, n_clusters=30, dim=16, seed=0):
    """Unit vectors around random centres (like real embeddings, unlike uniform noise)."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_clusters, dim, generator=generator), dim=-1)
    labels = torch.randint(0, n_clusters, (n_items,), generator=generator)
    return F.normalize(centres[labels] + 0.3 * torch.randn(n_items, dim, generator=generator), dim=-1)


def test_parameters_come_from_the_gallery_size():
    assert index_parameters(5000).kind == "flat"
    assert index_parameters(100_000).kind == "flat"
    big = index_parameters(1_000_000)
    assert (big.kind, big.n_lists, big.n_probe) == ("ivf", 1000, 125)
    assert index_parameters(200, "ivf").n_lists == 5  # at least 39 training points per list
    assert index_parameters(40_000, "ivf").n_lists == 200
    with pytest.raises(GalleryIndexError, match="expected 'auto', 'flat' or 'ivf', found 'hnsw'"):
        index_parameters(10, "hnsw")


def test_a_flat_index_returns_the_brute_force_shortlist():
    items, queries = clustered(), clustered(50, seed=1)
    index = GalleryIndex.build(items)
    assert index.parameters.kind == "flat"
    assert torch.equal(index.search_indices(queries, 10), shortlist(queries, items, 10))
    assert shortlist_recall(index, items, queries, 10) == 1.0


def test_an_ivf_index_finds_most_of_the_brute_force_shortlist():
    items, queries = clustered(), clustered(100, seed=1)
    index = GalleryIndex.build(items, kind="ivf", n_lists=30, n_probe=10)
    assert index.parameters == type(index.parameters)("ivf", 30, 10)
    recall = shortlist_recall(index, items, queries, 10)
    assert 0.9 <= recall <= 1.0
    # Probing one list of 30 loses neighbours: the recall measure sees it.
    one_list = GalleryIndex.build(items, kind="ivf", n_lists=30, n_probe=1)
    assert shortlist_recall(one_list, items, queries, 10) < recall


def test_saved_index_reloads_with_its_probe_count_and_is_reused_for_the_same_embeddings(tmp_path):
    items, queries = clustered(), clustered(20, seed=1)
    index = GalleryIndex.build(items, kind="ivf", n_lists=30, n_probe=5)
    index.save(tmp_path)
    loaded = GalleryIndex.load(tmp_path)
    assert loaded.parameters == index.parameters and loaded.n_items == 3000
    assert torch.equal(loaded.search_indices(queries, 7), index.search_indices(queries, 7))
    reused = GalleryIndex.load_or_build(tmp_path, items)
    assert reused.parameters.n_probe == 5  # the saved one, not a size-based flat index
    rebuilt = GalleryIndex.load_or_build(tmp_path, clustered(seed=2))
    assert rebuilt.parameters.kind == "flat" and GalleryIndex.load(tmp_path).source == rebuilt.source


def test_missing_or_broken_saved_index_is_a_user_error(tmp_path):
    with pytest.raises(GalleryIndexError, match="no saved first-stage index"):
        GalleryIndex.load(tmp_path)
    GalleryIndex.build(clustered(100)).save(tmp_path)
    (tmp_path / META_FILE).write_text("{}", encoding="utf-8")
    with pytest.raises(GalleryIndexError, match="not a first-stage index description"):
        GalleryIndex.load(tmp_path)


def test_queries_of_the_wrong_width_are_a_user_error():
    with pytest.raises(GalleryIndexError, match=r"expected \(n_queries, 16\), found shape \(2, 8\)"):
        GalleryIndex.build(clustered(100)).search(torch.randn(2, 8), 3)


def test_first_stage_embeddings_round_trip(tmp_path):
    images, captions = clustered(10), clustered(50, seed=1)
    save_embeddings(tmp_path, images, captions)
    loaded_images, loaded_captions = load_embeddings(tmp_path)
    assert torch.equal(loaded_images, images) and torch.equal(loaded_captions, captions)


def test_two_stage_shortlist_through_a_flat_index_equals_the_exact_one():
    images, captions = clustered(40), clustered(200, seed=1)
    index = GalleryIndex.build(images)
    through_index = shortlisted_pairs(images, captions, 5, image_search=index.search_indices)
    assert torch.equal(through_index, shortlisted_pairs(images, captions, 5))
