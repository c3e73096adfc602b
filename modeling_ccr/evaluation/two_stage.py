"""Two-stage retrieval: a global-embedding first stage shortlists, the cross-attention model re-ranks.

Exact cross-attention scoring of every image-caption pair is out of reach for large galleries (SGR/SAF on
COCO, millions of items). The first stage pools each item's fragment embeddings into one l2-normalised
vector (VSE++-style mean pooling of the model's own region and word embeddings) and shortlists, for
every image, its `k` best captions and, for every caption, its `k` best images by inner product (exact
blocked matmul, or a faiss inner-product index when faiss-cpu is installed and the gallery is large).
The cross-attention model then scores exactly the union of shortlisted pairs. Every other pair keeps its
first-stage order, placed below every re-ranked score, so ranks 1..k come from the cross-attention model
and the ranks behind them from the first stage. With k >= the gallery size this is exact scoring.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..models.modeling_matcher import GalleryScoring


class RerankError(UserError, ValueError):
    """An invalid two-stage retrieval setting."""


# Galleries with more items than this use a faiss index for the shortlist when faiss is installed.
FAISS_MIN_ITEMS = 100_000


def pooled_embeddings(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """l2-normalised mean of the valid fragments: `(items, n, D)`, mask `(items, n)` -> `(items, D)`."""
    weights = mask.unsqueeze(-1).to(embeds.dtype)
    pooled = (embeds * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def shortlist(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """Indices `(n_queries, k)` of each query's `k` highest inner products with the gallery `(items, D)`."""
    k = min(k, gallery.shape[0])
    if gallery.shape[0] >= FAISS_MIN_ITEMS and queries.device.type == "cpu":
        index = faiss_index(gallery)
        if index is not None:
            return torch.from_numpy(index.search(queries.float().numpy(), k)[1])
    # Query blocks keep the score block under about 64M entries.
    block = max(1, (1 << 26) // max(gallery.shape[0], 1))
    return torch.cat([(q @ gallery.T).topk(k, dim=1).indices for q in queries.split(block)])


def faiss_index(gallery: torch.Tensor):
    """An exact inner-product faiss index of the gallery, or None when faiss is not installed."""
    try:
        import faiss  # optional: pip install faiss-cpu
    except ImportError:
        return None
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery.float().contiguous().numpy())
    return index


@torch.no_grad()
def two_stage_similarity(
    model: GalleryScoring,
    image_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """`(n_images, n_captions)` scores whose top k per image and per caption are the model's exact scores.

    Inputs as `model.similarity`. Pairs outside both shortlists get their first-stage score mapped below
    every exact score, keeping the first stage's order among them.
    """
    if k < 1:
        raise RerankError(f"--rerank-k must be a positive number of candidates, got {k}")
    images = pooled_embeddings(image_embeds, region_mask)
    captions = pooled_embeddings(text_embeds, word_mask)
    first_stage = images @ captions.T
    rerank = torch.zeros_like(first_stage, dtype=torch.bool)
    rerank.scatter_(1, shortlist(images, captions, k), True)
    rerank.T.scatter_(1, shortlist(captions, images, k), True)
    exact = torch.full_like(first_stage, float("nan"))
    for image in range(image_embeds.shape[0]):
        columns = rerank[image].nonzero().squeeze(1)
        exact[image, columns] = model.similarity(
            image_embeds[image : image + 1],
            region_mask[image : image + 1],
            text_embeds[columns],
            word_mask[columns],
        )[0]
    # First-stage scores (cosines in [-1, 1]) shifted strictly below the lowest exact score.
    below = exact[rerank].min() - 3.0 + first_stage
    return torch.where(rerank, exact, below)
