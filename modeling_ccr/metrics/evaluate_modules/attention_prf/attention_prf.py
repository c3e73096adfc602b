"""Attention Precision / Recall / F1 against phrase boxes as a Hugging Face `evaluate` metric: a thin wrapper.

Every number comes from `modeling_ccr.metrics.attention` (`gold_regions`, `attended_regions`,
`word_precision_recall`, `summarize_precision_recall`); this file only turns evaluate's per-example rows
into the tensors those functions take. It therefore needs the `modeling_ccr` package installed
(`pip install "modeling-ccr[evaluate]"`).

One example = one word of a grounded phrase in a matched (image, caption) pair:
- `attention`: the word's attention weights over the image's regions (n_regions floats, padding removed);
- `region_boxes`: the regions' boxes, n_regions x (x1, y1, x2, y2);
- `phrase_boxes`: the gold boxes of the word's phrase, k x (x1, y1, x2, y2) (k may be 0).
"""

from __future__ import annotations

import datasets
import evaluate
import torch

from modeling_ccr.metrics.attention import (
    AttendedSetSpec,
    attended_regions,
    gold_regions,
    summarize_precision_recall,
    word_precision_recall,
)

_CITATION = """\
@inproceedings{chen2023more,
  title     = {More Than Just Attention: Improving Cross-Modal Attentions with Contrastive Constraints
               for Image-Text Matching},
  author    = {Chen, Yuxiao and Yuan, Jianbo and Zhao, Long and Chen, Tianlang and Luo, Rui and
               Davis, Larry and Metaxas, Dimitris N.},
  booktitle = {Proceedings of the IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2023}
}
@inproceedings{lee2018stacked,
  title     = {Stacked Cross Attention for Image-Text Matching},
  author    = {Lee, Kuang-Huei and Chen, Xi and Hua, Gang and Hu, Houdong and He, Xiaodong},
  booktitle = {Proceedings of the European Conference on Computer Vision (ECCV)},
  year      = {2018}
}
@inproceedings{plummer2015flickr30k,
  title     = {{Flickr30k Entities}: Collecting Region-to-Phrase Correspondences for Richer
               Image-to-Sentence Models},
  author    = {Plummer, Bryan A. and Wang, Liwei and Cervantes, Chris M. and Caicedo, Juan C. and
               Hockenmaier, Julia and Lazebnik, Svetlana},
  booktitle = {Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
  year      = {2015}
}
"""

_DESCRIPTION = """\
How well a cross-attention image-text model attends to the right regions. For each word t of a
grounded phrase: G_t = regions whose box has IoU >= iou_threshold with any gold box of the phrase;
A_t = the regions the word attends to (weight >= 1/n_regions by default, or >= a fixed threshold, or
the top-k); P_t = |A_t & G_t| / |A_t|, R_t = |A_t & G_t| / |G_t|. Words with an empty G_t are skipped;
an empty A_t scores P_t = R_t = 0. Reported: mean P and mean R over the scored words and F1 of the two
means. The attention metrics of Chen et al. (WACV 2023) as described in its text, in this project's
formulation (the paper's exact equations are not public): compare numbers only with numbers computed
with the same rule. A thin wrapper over `modeling_ccr.metrics.attention`.
"""

_KWARGS_DESCRIPTION = """
Args:
    attention (`list` of `list` of `float`): per word, its attention weights over the image's regions
        (only real regions, no padding; the `inverse_n` rule uses 1 / len(attention) as threshold). The
        rule is applied over the regions of each word (the t2i reading; for i2t models use
        `modeling_ccr.evaluation.gallery.attention_metrics`).
    region_boxes (`list` of `list` of 4 `float`): per word, the boxes (x1, y1, x2, y2) of the same
        regions, in the same order as `attention`.
    phrase_boxes (`list` of `list` of 4 `float`): per word, the gold boxes of its phrase (may be empty:
        the word is then skipped, as is a word none of whose regions reaches `iou_threshold`).
    rule (`str`, defaults to `"inverse_n"`): the attended set: `"inverse_n"` (a >= 1/n_regions),
        `"threshold"` (a >= value) or `"top_k"` (the `value` largest weights, ties broken by index).
    value (`float`, defaults to 0.0): the threshold in (0, 1] or the integer k >= 1 of the rule.
    iou_threshold (`float`, defaults to 0.5): IoU at which a region counts as gold, in (0, 1].

Returns:
    `attention_precision`, `attention_recall`, `attention_f1` (float in [0, 1]; F1 of the means),
    `n_words` (int, the words scored) and `attended_set_rule` (dict: the rule, value, iou_threshold).

Examples:
    >>> import evaluate
    >>> prf = evaluate.load("path/to/attention_prf")  # the folder holding this file
    >>> boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]]
    >>> results = prf.compute(
    ...     attention=[[0.5, 0.3, 0.1, 0.1]],  # regions 0 and 1 reach 1/4
    ...     region_boxes=[boxes],
    ...     phrase_boxes=[[[0, 0, 10, 10]]],  # region 0 is the gold one
    ... )
    >>> results["attention_precision"], results["attention_recall"], results["n_words"]
    (0.5, 1.0, 1)
"""


def _boxes_tensor(boxes: list) -> torch.Tensor:
    """(n, 4) float32 boxes, also for an empty list (the Features already enforce 4 coordinates)."""
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def word_precision_recall_from_rows(
    attention: list, region_boxes: list, phrase_boxes: list, rule: AttendedSetSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """P and R of every scored word from per-word rows, via the library's functions.

    Words have different region counts (different images), so the rows are padded to the largest count
    with a key mask: padded regions are never attended (masked) and never gold (no box).

    Args:
        attention: per word, (n_regions_w,) floats.
        region_boxes: per word, (n_regions_w, 4) floats.
        phrase_boxes: per word, (k_w, 4) floats.
        rule: the attended-set rule and IoU threshold.

    Returns:
        precision, recall: (n_scored_words,) float32, only the words with a non-empty gold set.

    Raises:
        ValueError: on no words, a word with no region, or an attention / region-box length mismatch.
    """
    if not attention:
        raise ValueError("attention: expected one attention row per word, found none")
    n_words, n_max = len(attention), max(len(row) for row in attention)
    weights = torch.zeros(n_words, n_max)
    key_mask = torch.zeros(n_words, n_max, dtype=torch.bool)
    gold = torch.zeros(n_words, n_max, dtype=torch.bool)
    for word, (row, regions, phrase) in enumerate(zip(attention, region_boxes, phrase_boxes, strict=True)):
        if len(row) == 0:
            raise ValueError(f"attention[{word}]: a word needs attention over at least one region")
        if len(row) != len(regions):
            raise ValueError(
                f"word {word}: attention has {len(row)} weights but region_boxes has {len(regions)} boxes; "
                "both must list the same regions"
            )
        weights[word, : len(row)] = torch.tensor(row, dtype=torch.float32)
        key_mask[word, : len(row)] = True
        gold[word, : len(row)] = gold_regions(
            _boxes_tensor(regions),
            _boxes_tensor(phrase),
            rule.iou_threshold,
        )
    attended = attended_regions(weights, key_mask, rule)
    precision, recall, valid = word_precision_recall(attended, gold)
    return precision[valid], recall[valid]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AttentionPRF(evaluate.Metric):
    """Attention precision, recall and F1 against phrase boxes (wraps `modeling_ccr.metrics.attention`)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # float32, the dtype of a model's attention: the `a >= 1/n` comparison is then the one the
            # library's own evaluation makes (a float64 input is rounded to float32).
            features=datasets.Features(
                {
                    "attention": datasets.Sequence(datasets.Value("float32")),
                    "region_boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                    "phrase_boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                }
            ),
            reference_urls=[
                "https://arxiv.org/abs/2105.09597",
                "https://arxiv.org/abs/1803.08024",
                "https://arxiv.org/abs/1505.04870",
            ],
        )

    def _compute(
        self,
        attention: list,
        region_boxes: list,
        phrase_boxes: list,
        rule: str = "inverse_n",
        value: float = 0.0,
        iou_threshold: float = 0.5,
    ) -> dict:
        """Mean P, mean R and F1 of the means over the scored words (`summarize_precision_recall`)."""
        attended_set_rule = AttendedSetSpec(rule=rule, value=value, iou_threshold=iou_threshold)
        precision, recall = word_precision_recall_from_rows(
            attention, region_boxes, phrase_boxes, attended_set_rule
        )
        summary = summarize_precision_recall(precision, recall)
        return {**summary, "attended_set_rule": attended_set_rule.to_dict()}
