"""The files a finished run writes beside its model: the test results, the run config, the run's record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..artifacts.integrity import weights_record
from ..artifacts.records import library_versions, results_record, tokenizer_record, write_json
from .run_config import ExperimentConfig
from .trainer import MatchingTrainer


def write_run_records(
    staging: Path,
    model_dir: Path,
    config: ExperimentConfig,
    trainer: MatchingTrainer,
    test_metrics: dict[str, Any],
    dataset_name: str,
) -> None:
    """Write `eval_results_test.json`, `training_config.yaml` and `run_info.json` into `staging`.

    The results and run_info name the model by the sha256 of its weights and of its tokenizer files, so
    `ccr evaluate` can tell a folder whose files were swapped since (`artifacts/loading.py`) and never
    overwrites these results with another model's.
    """
    weights, tokenizer = weights_record(staging), tokenizer_record(staging)
    write_json(
        staging / "eval_results_test.json",
        results_record(
            test_metrics,
            dataset_name,
            "test",
            [model_dir],
            {str(model_dir): weights},
            tokenizers={str(model_dir): tokenizer},
        ),
    )
    (staging / "training_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    write_json(
        staging / "run_info.json",
        {
            "seed": config.seed,
            "config_file": config.source_file,
            "dataset": dataset_name,
            "versions": library_versions(),
            "world_size": config.training.world_size,
            # Accumulated over every session of the run (a resumed run counts its earlier sessions too).
            "train_seconds": round(sum(s["seconds"] for s in trainer.sessions), 1),
            "sessions": trainer.sessions,
            "weights": weights,
            "tokenizer": tokenizer,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "best_validation_rsum": trainer.state.best_metric,
            "collapse_warnings": trainer.collapse_warnings,
            "log_history": trainer.state.log_history,
        },
    )
