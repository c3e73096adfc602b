"""Result records: what an evaluation JSON holds and the library versions recorded beside every run.

A record names each model by the sha256 of its weights (`weights`) and of its tokenizer files
(`tokenizers`): the two together say which model a result was measured with, so a results file is never
overwritten with the results of another model (other weights, or the same weights with another tokenizer).
"""

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
from .integrity import WeightsIntegrityError, check_can_overwrite_results, sha256_file, weights_record
from .loading import TOKENIZER_FILES


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


def tokenizer_record(model_dir: str | Path) -> dict[str, str]:
    """{file name: sha256} of the tokenizer files a model folder holds (`tokenizer.json`, its config)."""
    folder = Path(model_dir)
    return {name: sha256_file(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}


def results_record(
    metrics: dict[str, Any],
    dataset_name: str,
    split: str,
    models: list[str | Path],
    weights: dict[str, dict[str, Any]] | None = None,
    tokenizers: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """What an evaluation JSON holds: the models, the sha256 of their weights and tokenizer files, the data
    and split, the protocol (in metrics), the metrics."""
    return {
        "models": [str(m) for m in models],
        "weights": weights or {},
        "tokenizers": tokenizers or {},
        "dataset": dataset_name,
        "split": split,
        "metrics": metrics,
        "versions": library_versions(),
    }


def write_evaluation_record(
    metrics: dict[str, Any], dataset_name: str, split: str, models: list[str], output: Path | None
) -> Path:
    """Write the evaluation JSON (default: beside the first model) and return its path.

    The record names the sha256 of each model's weights and tokenizer files; a file holding results
    measured with other weights or another tokenizer of one of the models is never overwritten
    (WeightsIntegrityError).
    """
    if output is None:
        prefix = "ensemble_" if len(models) > 1 else ""
        output = Path(models[0]) / f"{prefix}eval_results_{split}.json"
    weights = {str(model): weights_record(model) for model in models}
    tokenizers = {str(model): tokenizer_record(model) for model in models}
    check_can_overwrite_results(output, [weights[str(model)]["sha256"] for model in models])
    check_same_tokenizers(output, [tokenizers[str(model)] for model in models])
    write_json(output, results_record(metrics, dataset_name, split, models, weights, tokenizers))
    return output


def check_same_tokenizers(path: str | Path, tokenizers: list[dict[str, str]]) -> None:
    """Refuse to replace a results file measured with another tokenizer of one of its models (compared
    by position, as the weights are; records without tokenizer hashes predate them and are not judged)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no results file, or an unreadable one: nothing worth keeping
    if not isinstance(record, dict) or not isinstance(record.get("models"), list):
        return
    recorded = record.get("tokenizers")
    if not isinstance(recorded, dict) or len(record["models"]) != len(tokenizers):
        return
    for model, current in zip(record["models"], tokenizers, strict=True):
        old = recorded.get(str(model))
        if not isinstance(old, dict):
            continue
        changed = sorted(name for name in set(old) | set(current) if old.get(name) != current.get(name))
        if changed:
            raise WeightsIntegrityError(
                f"{path} holds results measured with another tokenizer of {model} ({', '.join(changed)} "
                "differ); not overwriting them: pass --output to write these results elsewhere"
            )
