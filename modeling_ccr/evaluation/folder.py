"""Evaluate saved model folders on a split (`ccr evaluate`): retrieval, optional attention, one record.

`evaluate_folders` loads each folder (refusing one whose tokenizer, config and weights do not belong
together), finds the split (a saved DatasetDict, or the corpus recorded in the first folder's
`training_config.yaml`), scores the whole gallery (several folders: their ensemble) and returns a
`FolderEvaluation`; `write_evaluation` writes its JSON, never over the results of another model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..artifacts.integrity import weights_changed
from ..artifacts.loading import load_matching_folder
from ..artifacts.records import write_evaluation_record
from ..data.corpora import load_evaluation_split
from ..data.flickr30k_entities import attach_entities
from ..errors import InvalidValueError
from ..metrics.attention import AttendedSetSpec
from .gallery import attention_metrics, evaluate_matchers


@dataclasses.dataclass
class FolderEvaluation:
    """What an evaluation of model folders measured.

    metrics: retrieval metrics (`evaluate_matchers`), with `attention` (one entry per folder) when asked;
    warnings: sentences for the user (weights changed since training: the results record the current ones).
    """

    models: list[str]
    dataset_name: str
    split: str
    metrics: dict[str, Any]
    warnings: list[str] = dataclasses.field(default_factory=list)


def evaluate_folders(
    models: Sequence[str | Path],
    dataset: str | Path | None = None,
    split: str = "test",
    protocol: str = "full",
    captions_per_image: int | None = 5,
    rerank_k: int | None = None,
    eccv_subset: bool = False,
    attention: AttendedSetSpec | None = None,
    entities: str | Path | None = None,
    progress: bool = False,
) -> FolderEvaluation:
    """Full-gallery retrieval of one model folder (or the ensemble of several) on a split.

    dataset: a DatasetDict folder; None reads the corpus recorded in the first folder's run config.
    attention: also measure attention precision/recall/F1 of each folder under this attended-set rule
    (the split needs boxes and phrases; `entities` grounds it with a Flickr30k Entities folder).
    Raises InvalidValueError for a folder listed twice, ModelLoadError for a folder that cannot be
    loaded or whose files do not belong together.
    """
    names = [str(path) for path in models]
    if len({Path(path).resolve() for path in names}) < len(names):
        raise InvalidValueError(
            f"the same model is listed twice in {names}: an ensemble needs different models"
        )
    matchers, tokenizers = zip(*(load_matching_folder(path) for path in names), strict=True)
    warnings = [changed for changed in map(weights_changed, names) if changed]
    data, dataset_name = load_evaluation_split(names[0], None if dataset is None else str(dataset), split)
    if entities is not None:
        data = attach_entities(data, entities)
    metrics = evaluate_matchers(
        matchers,
        tokenizers,
        data,
        protocol,
        captions_per_image,
        progress=progress,
        rerank_k=rerank_k,
        eccv_subset=eccv_subset,
    )
    if attention is not None:
        metrics["attention"] = [
            attention_metrics(model, tokenizer, data, attention, progress=progress)
            for model, tokenizer in zip(matchers, tokenizers, strict=True)
        ]
    return FolderEvaluation(names, dataset_name, split, metrics, warnings)


def write_evaluation(result: FolderEvaluation, output: str | Path | None = None) -> Path:
    """Write the result's JSON (default: `eval_results_<split>.json` beside the first model, prefixed
    `ensemble_` for several) and return its path; a file holding another model's results is refused."""
    return write_evaluation_record(
        result.metrics,
        result.dataset_name,
        result.split,
        result.models,
        None if output is None else Path(output),
    )
