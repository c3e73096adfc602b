"""Result records: what an evaluation JSON holds and the library versions recorded beside every run."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import accelerate
import datasets
import torch
import transformers

from .._version import __version__
from .integrity import check_can_overwrite_results, weights_record


def library_versions() -> dict[str, str]:
    return {
        "modeling_ccr": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def results_record(
    metrics: dict[str, Any],
    dataset_name: str,
    split: str,
    models: list[str | Path],
    weights: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What an evaluation JSON holds: the models, the sha256 of their weights, the data and split, the
    protocol (in metrics), the metrics."""
    return {
        "models": [str(m) for m in models],
        "weights": weights or {},
        "dataset": dataset_name,
        "split": split,
        "metrics": metrics,
        "versions": library_versions(),
    }


def write_evaluation_record(
    metrics: dict[str, Any], dataset_name: str, split: str, models: list[str], output: Path | None
) -> Path:
    """Write the evaluation JSON (default: beside the first model) and return its path.

    The record names the sha256 of each model's weights; a file holding results measured with other
    weights of one of the models is never overwritten (WeightsIntegrityError).
    """
    if output is None:
        prefix = "ensemble_" if len(models) > 1 else ""
        output = Path(models[0]) / f"{prefix}eval_results_{split}.json"
    weights = {str(model): weights_record(model) for model in models}
    check_can_overwrite_results(output, [weights[str(model)]["sha256"] for model in models])
    write_json(output, results_record(metrics, dataset_name, split, models, weights))
    return output
