"""ECCV Caption and CxC retrieval metrics on COCO, from our similarity matrix, through `eccv-caption`.

R@K on the COCO Karpathy 5K test counts only each image's own 5 captions as right, although many other
captions describe it too. ECCV Caption (Chun et al., 2022) re-annotated positives for 1,332 query
captions and 1,261 query images of that test set; CxC (Parekh et al., 2021) for all of it. The
`eccv-caption` package (PyPI, optional extra `eccv`) ships those positives as COCO id mappings inside the
package (no download; only its PMRP metric needs an extra download, which we do not use) and defines:

- mAP@R: for a query with R positives, the mean over r = 1..R of precision@r counted at positive ranks;
- R-Precision: precision among the top R;
- R@1 on the ECCV positives, and R@K on the CxC positives.

Ids: the corpus's `image_id` must be the COCO image id and its `caption_ids` the COCO caption
(annotation) ids; Karpathy's `dataset_coco.json` `sentid`s are exactly those, so the Karpathy converter's
corpora qualify. Every COCO 5K test image's caption ids are checked against the package's own mapping.

Ranking: every query's gallery is ranked by similarity with pessimistic ties (a positive tied with a
negative ranks below it, as in `metrics.retrieval`), then cut to the depth the metrics read (the largest
number of positives of a query, at least the largest K): the package's metrics never look further.
Scores are percentages, like our R@K.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

from ..errors import UserError

RECALL_KS = (1, 5, 10)
DIRECTIONS = ("i2t", "t2i")
# Query rows ranked at once (bounds the memory of a (queries, gallery) block: 512 x 25000 int64 keys, 100 MB).
_QUERY_CHUNK = 512
PROTOCOL = "eccv"


class EccvError(UserError, ValueError):
    """A split whose ids cannot be matched to the COCO 5K test of the ECCV Caption / CxC annotations."""


def _package_metrics():
    """The package's `Metrics` (its COCO, CxC and ECCV positives), or an ImportError saying how to install."""
    try:
        from eccv_caption import Metrics
    except ImportError as err:
        raise ImportError(
            "ECCV Caption metrics need the eccv-caption package: pip install 'modeling-ccr[eccv]'"
        ) from err
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="failed to import `ujson`")  # it falls back to json
        return Metrics()


def package_version() -> str:
    from importlib.metadata import version

    return version("eccv-caption")


@dataclass
class Positives:
    """One benchmark's positives in one direction: {query id: [positive gallery ids]} (COCO ids)."""

    benchmark: str
    direction: str
    queries: dict[int, list[int]]


def coco_ids(dataset: datasets.Dataset) -> tuple[list[int], list[int]]:
    """COCO image id of each row and COCO caption id of each caption (in `caption_table` order)."""
    if "caption_ids" not in dataset.column_names:
        raise EccvError(
            "ECCV Caption metrics need a 'caption_ids' column (COCO caption ids, e.g. the Karpathy "
            f"converter's sentids); the split has {dataset.column_names}"
        )
    table = dataset.select_columns(["image_id", "caption_ids"]).with_format(None)
    image_ids = [_integer(value, "image_id", row) for row, value in enumerate(table["image_id"])]
    caption_ids = [
        _integer(value, "caption_ids", row) for row, ids in enumerate(table["caption_ids"]) for value in ids
    ]
    return image_ids, caption_ids


def _integer(value: str, column: str, row: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EccvError(
            f"column {column!r}, row {row}: expected a COCO id (an integer), found {value!r}"
        ) from None


def check_coco_captions(
    metrics, image_ids: Sequence[int], caption_ids: Sequence[int], caption_to_image: np.ndarray
) -> None:
    """Each COCO 5K test image of the split must carry exactly its COCO caption ids (the package's)."""
    coco = metrics.coco_gts["i2t"]
    for row, image_id in enumerate(image_ids):
        if image_id not in coco:
            continue
        found = sorted(caption_ids[j] for j in np.flatnonzero(caption_to_image == row))
        if found != sorted(coco[image_id]):
            raise EccvError(
                f"image {image_id} (row {row}) has caption ids {found}, but its COCO captions are "
                f"{sorted(coco[image_id])}: 'caption_ids' must be COCO caption ids"
            )


def check_whole_test(metrics, image_ids: Sequence[int], caption_ids: Sequence[int]) -> None:
    """The official numbers rank the whole COCO Karpathy 5K test: exactly its images and captions."""
    test_images, test_captions = set(metrics.coco_gts["i2t"]), set(metrics.coco_gts["t2i"])
    for kind, ids, test in (("images", image_ids, test_images), ("captions", caption_ids, test_captions)):
        ids = set(ids)
        if ids != test:
            raise EccvError(
                f"the official ECCV Caption / CxC numbers rank the whole COCO Karpathy 5K test; the split "
                f"has {len(ids & test)} of its {len(test)} {kind} and {len(ids - test)} others (e.g. "
                f"{sorted(test - ids)[:3] or sorted(ids - test)[:3]}); ask for a subset to score it anyway"
            )


def positives_in_split(
    gts: dict[str, dict[int, list[int]]],
    benchmark: str,
    image_ids: Sequence[int],
    caption_ids: Sequence[int],
    subset: bool,
) -> list[Positives]:
    """The benchmark's positives in both directions: as annotated (the split is the whole 5K test, see
    `check_whole_test`), or for a subset: the queries in the split, positives restricted to its gallery,
    queries left without a positive dropped."""
    if not subset:
        return [Positives(benchmark, direction, gts[direction]) for direction in DIRECTIONS]
    present = {"i2t": (set(image_ids), set(caption_ids)), "t2i": (set(caption_ids), set(image_ids))}
    chosen = []
    for direction in DIRECTIONS:
        queries_present, gallery_present = present[direction]
        kept = {
            query: [p for p in positives if p in gallery_present]
            for query, positives in gts[direction].items()
            if query in queries_present and any(p in gallery_present for p in positives)
        }
        if not kept:
            raise EccvError(f"{benchmark} {direction}: no query of the benchmark is in the split")
        chosen.append(Positives(benchmark, direction, kept))
    return chosen


def pessimistic_scores(scores: torch.Tensor, is_positive: torch.Tensor) -> torch.Tensor:
    """`(n, m)` float64 scores in which a positive ranks below a negative of equal score, nothing else moved.

    float32 scores are exact in float64, and the float64 just below a float32 value lies above the next
    float32 below it: nudging the positives there breaks exactly the ties, and only the ties.
    """
    nudged = scores.double()
    nudged[is_positive] = torch.nextafter(nudged[is_positive], torch.tensor(-torch.inf, dtype=torch.float64))
    return nudged


def ranked_items(
    scores: torch.Tensor, query_ids: Sequence[int], gallery_ids: Sequence[int], positives: Positives
) -> dict[int, list[int]]:
    """{query id: gallery ids ranked by score, cut to the depth the metrics read}, pessimistic ties.

    scores: `(n_queries, n_gallery)` rows in `query_ids` order, columns in `gallery_ids` order.
    """
    row_of = {query: row for row, query in enumerate(query_ids)}
    column_of = {item: column for column, item in enumerate(gallery_ids)}
    queries = list(positives.queries)
    depth = min(len(gallery_ids), max(max(RECALL_KS), *(len(p) for p in positives.queries.values())))
    gallery = torch.as_tensor(np.asarray(gallery_ids, dtype=np.int64))
    ranked = {}
    for start in range(0, len(queries), _QUERY_CHUNK):
        chunk = queries[start : start + _QUERY_CHUNK]
        block = scores[[row_of[q] for q in chunk]]
        is_positive = torch.zeros(block.shape, dtype=torch.bool)
        for i, query in enumerate(chunk):
            # A few ECCV positives lie outside the 5K test gallery: they count in R but cannot be ranked.
            is_positive[i, [column_of[p] for p in positives.queries[query] if p in column_of]] = True
        top = torch.topk(pessimistic_scores(block, is_positive), depth, dim=1, sorted=True).indices
        for query, columns in zip(chunk, gallery[top].tolist(), strict=True):
            ranked[query] = columns
    return ranked


def eccv_metrics(
    similarity: torch.Tensor | np.ndarray,
    image_ids: Sequence[int],
    caption_ids: Sequence[int],
    caption_to_image: np.ndarray | None = None,
    subset: bool = False,
) -> dict:
    """ECCV Caption mAP@R, R-Precision and R@1, and CxC R@1/5/10, both directions, in percent.

    similarity: `(n_images, n_captions)`; image_ids: COCO image id of each row; caption_ids: COCO
    caption id of each column; caption_to_image: `(n_captions,)` row of each caption's image (when
    given, each COCO test image's caption ids are checked against COCO's). subset: see
    `positives_in_split`; a subset's numbers are not the published benchmark and say so (`subset`).
    Returns flat keys `eccv_{i2t,t2i}_{map_at_r,rprecision,r1}`, `cxc_{i2t,t2i}_r{1,5,10}` and the query
    counts `n_{benchmark}_{direction}_queries`, `subset`, `package`.
    """
    similarity = torch.as_tensor(similarity).detach().cpu()
    if tuple(similarity.shape) != (len(image_ids), len(caption_ids)):
        raise ValueError(
            f"similarity {tuple(similarity.shape)} does not match {len(image_ids)} image ids x "
            f"{len(caption_ids)} caption ids"
        )
    metrics = _package_metrics()
    if caption_to_image is not None:
        check_coco_captions(metrics, image_ids, caption_ids, np.asarray(caption_to_image))
    if not subset:
        check_whole_test(metrics, image_ids, caption_ids)
    # Caption queries read columns: one contiguous copy makes them rows (fast to gather).
    views = {
        "i2t": (similarity, image_ids, caption_ids),
        "t2i": (similarity.T.contiguous(), caption_ids, image_ids),
    }
    results: dict = {"subset": subset, "package": f"eccv-caption {package_version()}"}
    for benchmark, gts in (("eccv", metrics.eccv_gts), ("cxc", metrics.cxc_gts)):
        items, chosen = {}, {}
        for positives in positives_in_split(gts, benchmark, image_ids, caption_ids, subset):
            scores, query_ids, gallery_ids = views[positives.direction]
            items[positives.direction] = ranked_items(scores, query_ids, gallery_ids, positives)
            chosen[positives.direction] = positives.queries
            results[f"n_{benchmark}_{positives.direction}_queries"] = len(positives.queries)
        setattr(metrics, f"{benchmark}_gts", chosen)  # the queries scored: all of them unless a subset
        results.update(_scores(metrics, benchmark, items))
    return results


def _scores(metrics, benchmark: str, items: dict[str, dict[int, list[int]]]) -> dict[str, float]:
    """The package's own metric functions on our ranked lists, as flat percentages."""
    if benchmark == "eccv":
        scores = metrics.eccv_metrics(items, "all")  # {"eccv_map_at_r": {"i2t": .., "t2i": ..}, ...}
        return {
            f"eccv_{direction}_{name.removeprefix('eccv_')}": 100.0 * float(values[direction])
            for name, values in scores.items()
            for direction in DIRECTIONS
        }
    return {
        f"cxc_{direction}_r{k}": 100.0 * float(value)
        for k in RECALL_KS
        for direction, value in metrics.cxc_recalls(items, "all", K=k).items()
    }


def check_eccv_split(dataset: datasets.Dataset, subset: bool = False) -> None:
    """Raise `EccvError` before any scoring if the split's ids cannot give the metrics (see `eccv_metrics`)."""
    image_ids, caption_ids = coco_ids(dataset)
    metrics = _package_metrics()
    counts = dataset.with_format("arrow", columns=["caption_ids"])[:].column("caption_ids")
    caption_to_image = np.repeat(np.arange(len(image_ids)), pc.list_value_length(counts).to_numpy())
    check_coco_captions(metrics, image_ids, caption_ids, caption_to_image)
    if not subset:
        check_whole_test(metrics, image_ids, caption_ids)


def corpus_eccv_metrics(
    similarity: torch.Tensor, dataset: datasets.Dataset, caption_to_image: np.ndarray, subset: bool = False
) -> dict:
    """`eccv_metrics` of a split's similarity matrix, with the split's COCO image and caption ids."""
    image_ids, caption_ids = coco_ids(dataset)
    return eccv_metrics(similarity, image_ids, caption_ids, caption_to_image, subset)


def format_eccv_table(results: dict) -> str:
    """The ECCV Caption / CxC scores of `eccv_metrics` as a small text table (percent)."""
    scope = (
        "a SUBSET of the COCO 5K test, not the published benchmark" if results["subset"] else "COCO 5K test"
    )
    lines = [
        f"\nECCV Caption and CxC ({results['package']}; {scope})",
        f"{'':<5}{'mAP@R':>8}{'R-P':>8}{'ECCV R@1':>10}{'CxC R@1':>9}{'CxC R@5':>9}{'CxC R@10':>10}",
    ]
    for d in DIRECTIONS:
        values = [results[f"eccv_{d}_{name}"] for name in ("map_at_r", "rprecision", "r1")]
        values += [results[f"cxc_{d}_r{k}"] for k in RECALL_KS]
        widths = (8, 8, 10, 9, 9, 10)
        lines.append(f"{d:<5}" + "".join(f"{v:>{w}.2f}" for v, w in zip(values, widths, strict=True)))
    return "\n".join(lines)
