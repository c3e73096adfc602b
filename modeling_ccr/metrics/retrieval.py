"""Image-text retrieval metrics: ranks, Recall@K, rSum, and the COCO 5-fold 1K protocol.

Plain torch/numpy functions (no model imports). The input is a similarity matrix between every test
image and every test caption, plus the image row of each caption:

- `similarity`: (n_images, n_captions) float, higher = more similar.
- `caption_to_image`: (n_captions,) int, the row of `similarity` that caption `j` describes. Images may
  have different caption counts; the standard protocol (Flickr30K, COCO) is 5 per image.

Definitions (as in the VSE++/SCAN evaluation code):

- image-to-text (i2t) rank of an image: the 1-based rank of the BEST-ranked of its own captions among
  all captions;
- text-to-image (t2i) rank of a caption: the 1-based rank of its one image among all images;
- R@K: percentage of queries with rank <= K; rSum: the sum of the i2t and t2i recalls (six numbers with
  the default ks=(1, 5, 10)); medr: floor of the median rank; meanr: mean rank.

Ties are resolved pessimistically: rank = 1 + number of WRONG candidates scoring >= the correct one.
A constant similarity matrix therefore gets the worst possible ranks, never a perfect score (an
optimistic or index-order tie-break would reward a collapsed model that scores everything equally).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

PROTOCOLS = ("full", "coco_5fold_1k")

# Default memory bound: image rows per chunk are chosen so a chunk holds about this many scores.
_CHUNK_ELEMENTS = 1 << 23

ArrayLike = torch.Tensor | np.ndarray


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.as_tensor(x)
    raise ValueError(f"{name}: expected a torch.Tensor or np.ndarray, found {type(x).__name__}")


def validate_retrieval_inputs(
    similarity: ArrayLike,
    caption_to_image: ArrayLike,
    check_captions_per_image: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the inputs of a retrieval evaluation and return them as tensors on one device.

    Args:
        similarity: (n_images, n_captions) float.
        caption_to_image: (n_captions,) int in [0, n_images).
        check_captions_per_image: if given (e.g. 5), every image must have exactly this many captions.

    Returns:
        `similarity` (n_images, n_captions) floating tensor and `caption_to_image` (n_captions,) int64
        tensor on the device of `similarity`.

    Raises:
        ValueError: on a shape mismatch, an out-of-range or non-integer `caption_to_image`, an image
            with no caption, or a caption count that breaks `check_captions_per_image`. NaN in
            `similarity` is detected chunk by chunk in `retrieval_ranks` (to stay memory-bounded).
    """
    sim = _as_tensor(similarity, "similarity")
    c2i = _as_tensor(caption_to_image, "caption_to_image")
    if sim.ndim != 2:
        raise ValueError(f"similarity: expected shape (n_images, n_captions), found {tuple(sim.shape)}")
    if not sim.is_floating_point():
        sim = sim.float()
    if c2i.ndim != 1:
        raise ValueError(f"caption_to_image: expected shape (n_captions,), found {tuple(c2i.shape)}")
    if c2i.is_floating_point() or c2i.is_complex() or c2i.dtype == torch.bool:
        raise ValueError(f"caption_to_image: expected an integer dtype, found {c2i.dtype}")
    n_images, n_captions = sim.shape
    if c2i.shape[0] != n_captions:
        raise ValueError(
            f"shape mismatch: similarity has {n_captions} caption columns (shape {tuple(sim.shape)}) "
            f"but caption_to_image has {c2i.shape[0]} entries"
        )
    if n_images == 0 or n_captions == 0:
        raise ValueError(f"similarity is empty: shape {tuple(sim.shape)}")
    c2i = c2i.to(device=sim.device, dtype=torch.long)
    low, high = int(c2i.min()), int(c2i.max())
    if low < 0 or high >= n_images:
        bad = int(torch.nonzero((c2i < 0) | (c2i >= n_images))[0])
        raise ValueError(
            f"caption_to_image out of range: caption {bad} maps to image {int(c2i[bad])}, "
            f"expected a row in [0, {n_images})"
        )
    counts = torch.bincount(c2i, minlength=n_images)
    if bool((counts == 0).any()):
        empty = int(torch.nonzero(counts == 0)[0])
        raise ValueError(
            f"image row {empty} has no caption in caption_to_image; every image needs at least one "
            "caption to be ranked for image-to-text retrieval"
        )
    if check_captions_per_image is not None and bool((counts != check_captions_per_image).any()):
        bad = int(torch.nonzero(counts != check_captions_per_image)[0])
        raise ValueError(
            f"expected {check_captions_per_image} captions per image (check_captions_per_image="
            f"{check_captions_per_image}), but image row {bad} has {int(counts[bad])}"
        )
    return sim, c2i


# ----------------------------------------------------------------------------------------------------
# Ranks and recalls
# ----------------------------------------------------------------------------------------------------


def _default_chunk_size(n_captions: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_captions))


def retrieval_ranks(
    similarity: ArrayLike,
    caption_to_image: ArrayLike,
    chunk_size: int | None = None,
    check_captions_per_image: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based i2t and t2i ranks with pessimistic tie-breaking, computed in chunks of image rows.

    i2t rank of image i = 1 + #{captions j not of image i : S[i, j] >= max over own captions S[i, j']}
    (the rank of its best-ranked own caption). t2i rank of caption j with image g =
    1 + #{images i != g : S[i, j] >= S[g, j]}. Ties count against the model, so a constant matrix
    gets the worst ranks (n_captions - c + 1 for i2t, n_images for t2i).

    Args:
        similarity: (n_images, n_captions) float, torch (any device) or numpy.
        caption_to_image: (n_captions,) int, the image row of each caption.
        chunk_size: image rows processed at once (extra memory about chunk_size * n_captions * 8
            bytes for float32); the default keeps a chunk near 8M scores (335 rows for COCO 5K's
            25,000 captions, ~70 MB), so the only full-size array is `similarity` itself.
        check_captions_per_image: optional exact caption count per image (see
            `validate_retrieval_inputs`).

    Returns:
        `(i2t_ranks, t2i_ranks)`: int64 CPU tensors of shapes (n_images,) and (n_captions,).
    """
    sim, c2i = validate_retrieval_inputs(similarity, caption_to_image, check_captions_per_image)
    n_images, n_captions = sim.shape
    chunk_size = _default_chunk_size(n_captions) if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, found {chunk_size}")

    # Score of each caption's true image: (n_captions,).
    true_scores = sim[c2i, torch.arange(n_captions, device=sim.device)]
    t2i_wrong_ge = torch.zeros(n_captions, dtype=torch.long, device=sim.device)
    i2t_ranks = torch.empty(n_images, dtype=torch.long, device=sim.device)

    for start in range(0, n_images, chunk_size):
        block = sim[start : start + chunk_size]  # (rows, n_captions), a view
        if bool(torch.isnan(block).any()):
            row = start + int(torch.nonzero(torch.isnan(block).any(dim=1))[0])
            raise ValueError(f"similarity contains NaN (first in image row {row})")
        rows = torch.arange(start, start + block.shape[0], device=sim.device)
        own = c2i[None, :] == rows[:, None]  # (rows, n_captions): caption j belongs to this row's image
        # t2i: wrong images in this chunk scoring >= each caption's true image.
        t2i_wrong_ge += ((block >= true_scores[None, :]) & ~own).sum(dim=0)
        # i2t: wrong captions scoring >= the image's best own caption.
        best_own = block.masked_fill(~own, -math.inf).amax(dim=1)  # (rows,)
        i2t_ranks[start : start + block.shape[0]] = 1 + ((block >= best_own[:, None]) & ~own).sum(dim=1)

    return i2t_ranks.cpu(), (1 + t2i_wrong_ge).cpu()


def _ranks_numpy(ranks: ArrayLike) -> np.ndarray:
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks: expected a non-empty 1-D array, found shape {ranks.shape}")
    return ranks


def recall_metrics(
    i2t_ranks: ArrayLike, t2i_ranks: ArrayLike, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K (percent), rSum, median and mean rank from 1-based ranks.

    Args:
        i2t_ranks: (n_images,) int, 1-based.
        t2i_ranks: (n_captions,) int, 1-based.
        ks: the K of each Recall@K.

    Returns:
        `{i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, rsum, i2t_medr, i2t_meanr, t2i_medr,
        t2i_meanr}` as Python floats (keys follow `ks`). rsum is the sum of all the recalls; medr is
        the floor of the median rank (the VSE++/SCAN convention), meanr the mean rank.
    """
    metrics: dict[str, float] = {}
    ranks_by_direction = {"i2t": _ranks_numpy(i2t_ranks), "t2i": _ranks_numpy(t2i_ranks)}
    for direction, ranks in ranks_by_direction.items():
        for k in ks:
            metrics[f"{direction}_r{k}"] = float(100.0 * np.mean(ranks <= k))
    metrics["rsum"] = float(sum(metrics[f"{d}_r{k}"] for d in ranks_by_direction for k in ks))
    for direction, ranks in ranks_by_direction.items():
        metrics[f"{direction}_medr"] = float(np.floor(np.median(ranks)))
        metrics[f"{direction}_meanr"] = float(np.mean(ranks))
    return metrics


# ----------------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------------


def _fold_inputs(
    sim: torch.Tensor, c2i: torch.Tensor, fold: int, fold_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (fold_size, n_fold_captions) block of fold `fold` and its captions' image rows in the fold."""
    start = fold * fold_size
    caption_cols = torch.nonzero((c2i >= start) & (c2i < start + fold_size)).squeeze(1)
    return sim[start : start + fold_size][:, caption_cols], c2i[caption_cols] - start


def evaluate_retrieval(
    similarity: ArrayLike,
    caption_to_image: ArrayLike,
    protocol: str = "full",
    n_folds: int = 5,
    ks: Sequence[int] = (1, 5, 10),
    check_captions_per_image: int | None = None,
    chunk_size: int | None = None,
) -> dict:
    """Evaluate image-text retrieval under a named protocol.

    Protocols:
        - `"full"`: all images and captions at once (Flickr30K 1K test, COCO 5K).
        - `"coco_5fold_1k"`: the images are split into `n_folds` contiguous folds of
          n_images / n_folds images (5 x 1000 for COCO 5K), each with the captions of its images; the
          metrics are computed within each fold and averaged over folds (COCO 1K).

    Args:
        similarity: (n_images, n_captions) float.
        caption_to_image: (n_captions,) int, the image row of each caption.
        protocol: one of `PROTOCOLS`.
        n_folds: number of folds for `"coco_5fold_1k"`; must divide n_images.
        ks: the K of each Recall@K.
        check_captions_per_image: optional exact caption count per image (e.g. 5).
        chunk_size: image rows per chunk (see `retrieval_ranks`).

    Returns:
        The metrics of `recall_metrics` (the fold means for the fold protocol), plus `protocol`,
        `n_images`, `n_captions`; the fold protocol adds `n_folds` and `folds`, a list of each fold's
        metrics.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}, expected one of {PROTOCOLS}")
    sim, c2i = validate_retrieval_inputs(similarity, caption_to_image, check_captions_per_image)
    n_images, n_captions = sim.shape
    header: dict = {"protocol": protocol, "n_images": n_images, "n_captions": n_captions}

    if protocol == "full":
        return {**header, **recall_metrics(*retrieval_ranks(sim, c2i, chunk_size), ks=ks)}

    if n_folds < 1 or n_images % n_folds != 0:
        raise ValueError(
            f"protocol {protocol!r}: {n_images} images do not split evenly into n_folds={n_folds} folds"
        )
    fold_size = n_images // n_folds
    folds = [
        recall_metrics(*retrieval_ranks(*_fold_inputs(sim, c2i, f, fold_size), chunk_size), ks=ks)
        for f in range(n_folds)
    ]
    means = {key: float(np.mean([fold[key] for fold in folds])) for key in folds[0]}
    return {**header, "n_folds": n_folds, **means, "folds": folds}


# ----------------------------------------------------------------------------------------------------
# Chance level
# ----------------------------------------------------------------------------------------------------


def chance_recall(n_images: int, captions_per_image: int, k: int) -> dict[str, float]:
    """Expected R@K (percent) of a uniformly random ranking, with `captions_per_image` = c per image.

    t2i: the one true image is among the top K of n_images with probability min(K, n_images) / n_images.
    i2t: at least one of the c own captions is among the top K of n_captions = n_images * c, i.e.
    1 - C(n_captions - c, K) / C(n_captions, K) = 1 - prod_{i<K} (1 - c / (n_captions - i)),
    computed as -expm1(sum log1p(-c / (n_captions - i))) so that it stays accurate for large sizes.

    Returns:
        `{"i2t": percent, "t2i": percent}`.
    """
    if n_images < 1 or captions_per_image < 1 or k < 1:
        raise ValueError(
            f"chance_recall: expected positive n_images, captions_per_image and k, found "
            f"{n_images}, {captions_per_image}, {k}"
        )
    n_captions = n_images * captions_per_image
    if k > n_captions - captions_per_image:
        i2t = 1.0  # fewer than K wrong captions: an own caption is always in the top K
    else:
        log_miss = sum(math.log1p(-captions_per_image / (n_captions - i)) for i in range(k))
        i2t = -math.expm1(log_miss)
    t2i = min(k, n_images) / n_images
    return {"i2t": 100.0 * i2t, "t2i": 100.0 * t2i}


def chance_metrics(
    n_images: int, captions_per_image: int, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Chance-level metrics with the keys of `recall_metrics` (recalls, rsum and mean ranks).

    Mean ranks of a random ranking: t2i (n_images + 1) / 2; i2t (best of c among n_captions)
    (n_captions + 1) / (c + 1). Median ranks are omitted.
    """
    per_k = {k: chance_recall(n_images, captions_per_image, k) for k in ks}
    chance = {f"{d}_r{k}": per_k[k][d] for d in ("i2t", "t2i") for k in ks}
    chance["rsum"] = sum(chance.values())
    n_captions = n_images * captions_per_image
    chance["i2t_meanr"] = (n_captions + 1) / (captions_per_image + 1)
    chance["t2i_meanr"] = (n_images + 1) / 2
    return chance


# ----------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------


def _recall_ks(metrics: dict) -> list[int]:
    ks = {int(key[len("i2t_r") :]) for key in metrics if key.startswith("i2t_r") and key[5:].isdigit()}
    return sorted(ks)


def format_results_table(metrics: dict, chance: dict | None = None) -> str:
    """A small aligned plain-text table: rows i2t / t2i (and chance rows), columns R@K, medr, meanr.

    Args:
        metrics: the output of `recall_metrics` or `evaluate_retrieval`.
        chance: optional chance-level metrics (e.g. `chance_metrics(...)`); missing values print "-".

    Returns:
        The table, with an rSum line and, when `metrics` carries it, a protocol header line.
    """
    ks = _recall_ks(metrics)
    columns = [*(f"R@{k}" for k in ks), "medr", "meanr"]
    keys = [*(f"r{k}" for k in ks), "medr", "meanr"]

    def cell(values: dict, key: str) -> str:
        value = values.get(key)
        if value is None:
            return "-"
        # Chance recalls on large sets are tiny: keep two significant digits rather than print 0.0.
        return f"{value:.2g}" if 0 < abs(value) < 0.1 else f"{value:.1f}"

    rows = [("", columns)]
    for direction in ("i2t", "t2i"):
        rows.append((direction, [cell(metrics, f"{direction}_{key}") for key in keys]))
    if chance is not None:
        for direction in ("i2t", "t2i"):
            rows.append((f"chance {direction}", [cell(chance, f"{direction}_{key}") for key in keys]))

    label_width = max(len(label) for label, _ in rows)
    col_width = max(len(value) for _, values in rows for value in values)
    lines = [
        label.ljust(label_width) + "".join(f"  {v:>{col_width}}" for v in values) for label, values in rows
    ]
    if "protocol" in metrics:
        lines.insert(
            0,
            f"protocol: {metrics['protocol']} ({metrics.get('n_images')} images, "
            f"{metrics.get('n_captions')} captions)",
        )
    rsum = f"rSum: {metrics['rsum']:.1f}" if "rsum" in metrics else "rSum: -"
    if chance is not None and "rsum" in chance:
        rsum += f"  (chance {chance['rsum']:.1f})"
    lines.append(rsum)
    return "\n".join(lines)
