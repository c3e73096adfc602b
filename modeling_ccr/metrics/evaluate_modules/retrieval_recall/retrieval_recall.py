"""Image-text retrieval Recall@K as a Hugging Face `evaluate` metric: a thin wrapper.

Every number comes from `modeling_ccr.metrics.retrieval.evaluate_retrieval` (ranks with pessimistic
tie-breaking, R@K, rSum, medr/meanr, the COCO 5-fold 1K protocol); this file only turns evaluate's
per-example rows back into the (similarity, caption_to_image) pair that function takes. It therefore
needs the `modeling_ccr` package installed (`pip install "modeling-ccr[evaluate]"`).

One example = one image:
- `predictions`: the image's row of the similarity matrix, one float per caption of the WHOLE test
  set (every row has the same length n_captions, in the same caption order);
- `references`: the caption columns that describe this image (e.g. 5 ints for Flickr30K/COCO).
Every caption column must belong to exactly one image.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from modeling_ccr.metrics.retrieval import PROTOCOLS, evaluate_retrieval

_CITATION = """\
@inproceedings{lee2018stacked,
  title     = {Stacked Cross Attention for Image-Text Matching},
  author    = {Lee, Kuang-Huei and Chen, Xi and Hua, Gang and Hu, Houdong and He, Xiaodong},
  booktitle = {Proceedings of the European Conference on Computer Vision (ECCV)},
  year      = {2018}
}
@inproceedings{faghri2018vse,
  title     = {{VSE++}: Improving Visual-Semantic Embeddings with Hard Negatives},
  author    = {Faghri, Fartash and Fleet, David J. and Kiros, Jamie Ryan and Fidler, Sanja},
  booktitle = {Proceedings of the British Machine Vision Conference (BMVC)},
  year      = {2018}
}
"""

_DESCRIPTION = """\
Image-text retrieval Recall@K (image-to-text and text-to-image), rSum, median and mean rank, with the
"full" protocol (Flickr30K 1K test, COCO 5K) or the COCO 5-fold 1K protocol. Ties count against the
model (rank = 1 + number of wrong candidates scoring >= the correct one), so a constant similarity
matrix gets the worst ranks, never a perfect score. A thin wrapper over
`modeling_ccr.metrics.retrieval.evaluate_retrieval`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per image, the similarity of that image to every
        caption of the test set, higher = more similar. All rows have the same length n_captions.
    references (`list` of `list` of `int`): one entry per image, the 0-based caption columns that
        describe that image. Every column in [0, n_captions) must appear exactly once overall.
    protocol (`str`, defaults to `"full"`): `"full"` or `"coco_5fold_1k"` (images split into `n_folds`
        contiguous folds, each with its own captions; metrics averaged over folds).
    n_folds (`int`, defaults to 5): folds of `"coco_5fold_1k"`; must divide the number of images.
    ks (`list` of `int`, defaults to `[1, 5, 10]`): the K of each Recall@K.
    check_captions_per_image (`int`, optional): if set (e.g. 5), every image must have exactly this
        many captions.
    chunk_size (`int`, optional): image rows ranked at once (memory bound; results do not depend on it).

Returns:
    Exactly the dict of `evaluate_retrieval`: `protocol` (str), `n_images`, `n_captions` (int),
    `i2t_r1`, `i2t_r5`, `i2t_r10`, `t2i_r1`, `t2i_r5`, `t2i_r10` (percent, keys follow `ks`), `rsum`,
    `i2t_medr`, `i2t_meanr`, `t2i_medr`, `t2i_meanr` (float); `"coco_5fold_1k"` adds `n_folds` (int)
    and `folds` (a list of each fold's metrics; the top-level numbers are their means).

Examples:
    >>> import evaluate
    >>> recall = evaluate.load("path/to/retrieval_recall")  # the folder holding this file
    >>> # 2 images, 4 captions: captions 0, 1 describe image 0 and captions 2, 3 image 1
    >>> results = recall.compute(
    ...     predictions=[[0.9, 0.8, 0.1, 0.2], [0.3, 0.1, 0.7, 0.9]],
    ...     references=[[0, 1], [2, 3]],
    ... )
    >>> results["i2t_r1"], results["t2i_r1"], results["rsum"]
    (100.0, 100.0, 600.0)
"""


def caption_to_image_from_references(references: list, n_captions: int) -> np.ndarray:
    """Invert per-image caption columns into the (n_captions,) image row of each caption.

    Args:
        references: one sequence of int caption columns per image, in image (row) order.
        n_captions: the length of every similarity row.

    Returns:
        `caption_to_image`: (n_captions,) int64, as `evaluate_retrieval` expects.

    Raises:
        ValueError: if a column is out of range, claimed by two images, or claimed by none.
    """
    caption_to_image = np.full(n_captions, -1, dtype=np.int64)
    for image, columns in enumerate(references):
        for column in np.asarray(columns, dtype=np.int64).reshape(-1):
            if not 0 <= column < n_captions:
                raise ValueError(
                    f"references[{image}]: caption column {column} is out of range, expected a column in "
                    f"[0, {n_captions}) (the length of each predictions row)"
                )
            if caption_to_image[column] != -1:
                raise ValueError(
                    f"references: caption column {column} is claimed by image {caption_to_image[column]} "
                    f"and by image {image}; every caption describes exactly one image"
                )
            caption_to_image[column] = image
    unclaimed = np.flatnonzero(caption_to_image == -1)
    if unclaimed.size:
        raise ValueError(
            f"references: caption column {int(unclaimed[0])} (and {unclaimed.size - 1} more) belongs to no "
            f"image; every one of the {n_captions} columns must appear in exactly one references entry"
        )
    return caption_to_image


def similarity_from_predictions(predictions: list) -> np.ndarray:
    """Stack per-image similarity rows into the (n_images, n_captions) float64 matrix.

    Raises:
        ValueError: if there are no rows or the rows differ in length.
    """
    rows = [np.asarray(row, dtype=np.float64).reshape(-1) for row in predictions]
    if not rows:
        raise ValueError("predictions: expected one similarity row per image, found none")
    lengths = {row.shape[0] for row in rows}
    if len(lengths) != 1:
        raise ValueError(
            "predictions: every similarity row must score the same n_captions captions, found row "
            f"lengths {sorted(lengths)}"
        )
    return np.stack(rows)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    """Recall@K, rSum and ranks of image-text retrieval (wraps `evaluate_retrieval`)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # float64 storage is exact for float32 and float64 scores, so ranks (and their ties) are
            # those of the matrix the caller passed.
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1803.08024", "https://arxiv.org/abs/1707.05612"],
        )

    def _compute(
        self,
        predictions: list,
        references: list,
        protocol: str = "full",
        n_folds: int = 5,
        ks: tuple[int, ...] | list[int] = (1, 5, 10),
        check_captions_per_image: int | None = None,
        chunk_size: int | None = None,
    ) -> dict:
        """Rebuild (similarity, caption_to_image) and return `evaluate_retrieval`'s dict unchanged."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}, expected one of {PROTOCOLS}")
        similarity = similarity_from_predictions(predictions)
        caption_to_image = caption_to_image_from_references(references, similarity.shape[1])
        return evaluate_retrieval(
            similarity,
            caption_to_image,
            protocol=protocol,
            n_folds=n_folds,
            ks=tuple(ks),
            check_captions_per_image=check_captions_per_image,
            chunk_size=chunk_size,
        )
