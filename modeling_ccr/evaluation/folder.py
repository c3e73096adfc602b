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
from ..data.image_corpus import tower_feature_split
from ..data.schema import is_image_corpus
from ..errors import InvalidValueError
from ..metrics.attention import AttendedSetSpec
from .attention_drift import digit_scenes_drift
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
    index_dir: str | Path | None = None,
    eccv_subset: bool = False,
    attention: AttendedSetSpec | None = None,
    entities: str | Path | None = None,
    progress: bool = False,
) -> FolderEvaluation:
    """Full-gallery retrieval of one model folder (or the ensemble of several) on a split.

    dataset: a DatasetDict folder; None reads the corpus recorded in the first folder's run config. An
    image corpus is encoded once by the model's vision tower, then scored as region features.
    rerank_k: two-stage retrieval (a first-stage shortlist of k re-ranked by the model); index_dir: where
    the first stage's index is saved and found again (`GalleryIndex.load_or_build`).
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
    data = _as_seen_by(matchers, names, data, dataset_name)
    metrics = evaluate_matchers(
        matchers,
        tokenizers,
        data,
        protocol,
        captions_per_image,
        progress=progress,
        rerank_k=rerank_k,
        index_dir=index_dir,
        eccv_subset=eccv_subset,
    )
    if attention is not None:
        metrics["attention"] = [
            _attention(model, tokenizer, data, attention, progress, name, dataset_name)
            for model, tokenizer, name in zip(matchers, tokenizers, names, strict=True)
        ]
        # A digit-scenes corpus knows where every texture is drawn: the drift of each model's attention.
        drifts = [
            digit_scenes_drift(m, t, data, _corpus_folder(dataset_name), split)
            for m, t in zip(matchers, tokenizers, strict=True)
        ]
        if any(drift is not None for drift in drifts):
            metrics["attention_drift"] = drifts
    return FolderEvaluation(names, dataset_name, split, metrics, warnings)


def _attention(
    model: Any, tokenizer: Any, data: Any, spec: AttendedSetSpec, progress: bool, name: str, dataset_name: str
) -> dict[str, Any]:
    """One folder's attention metrics; a split with nothing to score is the user's error, in one line."""
    try:
        return attention_metrics(model, tokenizer, data, spec, progress=progress)
    except ValueError as err:
        raise InvalidValueError(f"{name} on {dataset_name}: attention metrics: {err}") from None


def _corpus_folder(dataset_name: str) -> Path | None:
    """The folder the split was read from (load_corpus names a saved corpus by its path), else None."""
    return Path(dataset_name) if Path(dataset_name).is_dir() else None


def _as_seen_by(matchers: Sequence[Any], names: list[str], data: Any, dataset_name: str) -> Any:
    """The split as the models score it: an image corpus through the (single) model's vision tower, each
    image encoded once; region features as stored. A model and a split of different kinds are refused."""
    towers = [getattr(model, "vision_tower", None) is not None for model in matchers]
    if not is_image_corpus(data):
        if any(towers):
            raise InvalidValueError(
                f"{names[towers.index(True)]} has a vision tower and scores images, but {dataset_name} holds "
                "region features: evaluate it on an image corpus (ccr convert images)"
            )
        return data
    if not all(towers):
        raise InvalidValueError(
            f"{names[towers.index(False)]} reads region features, but {dataset_name} holds images: extract "
            "features first (ccr extract), or evaluate a model with a vision tower"
        )
    if len(matchers) > 1:
        raise InvalidValueError(
            f"{dataset_name} holds images: an ensemble of vision-tower models is not supported (evaluate "
            "each folder on its own)"
        )
    return tower_feature_split(matchers[0], data)


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
