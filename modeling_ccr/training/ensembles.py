"""One ensemble checkpoint from separately trained models (`ccr ensemble`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..artifacts.integrity import sha256_file
from ..artifacts.loading import load_matcher
from ..artifacts.records import library_versions, write_json
from ..errors import ConfigError
from ..models import EnsembleModel


def assemble_ensemble(model_dirs: Sequence[str | Path], output_dir: str | Path) -> Path:
    """One `EnsembleModel` checkpoint from separately trained models (or ensembles) sharing a tokenizer.

    Writes the ensemble's weights, config and code, the shared tokenizer, `ensemble_members.json` (where
    each member came from, with its run info) and, when the members have one, a `training_config.yaml`:
    the first member's run config with the members' model sections, so `ccr evaluate` finds the data.
    Returns output_dir.
    """
    members, provenance, vocabulary, run_configs = [], [], None, []
    seen: dict[str, Path] = {}
    for model_dir in map(Path, model_dirs):
        model, tokenizer = load_matcher(model_dir)
        members.extend(model.members if isinstance(model, EnsembleModel) else [model])
        if vocabulary is not None and tokenizer.get_vocab() != vocabulary:
            raise ConfigError(
                f"{model_dir}: its tokenizer differs from {model_dirs[0]}'s; members must share one vocabulary"
            )
        vocabulary = tokenizer.get_vocab()
        # The same folder twice, or a copy of it, would weigh one model double and report a fake ensemble.
        sha = sha256_file(model_dir / "model.safetensors")
        if sha in seen:
            raise ConfigError(
                f"{model_dir} and {seen[sha]} hold the same weights (sha256 {sha[:12]}): an ensemble needs "
                "different models"
            )
        seen[sha] = model_dir
        run_info, run_config = model_dir / "run_info.json", model_dir / "training_config.yaml"
        if run_config.is_file():
            run_configs.append(yaml.safe_load(run_config.read_text()))
        provenance.append(
            {
                "model_dir": str(model_dir),
                "model_type": model.config.model_type,
                "run_info": json.loads(run_info.read_text()) if run_info.is_file() else None,
            }
        )
    if len(members) < 2:
        raise ConfigError(
            f"an ensemble needs at least two members, got {len(members)} from {list(model_dirs)}"
        )
    output_dir = Path(output_dir)
    EnsembleModel.from_members(members).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_json(output_dir / "ensemble_members.json", {"members": provenance, "versions": library_versions()})
    if run_configs and len(run_configs) == len(provenance):
        member_sections = [
            section
            for run_config in run_configs
            for section in run_config["model"].get("members", [run_config["model"]])
        ]
        combined = {**run_configs[0], "model": {"backbone": "ensemble", "members": member_sections}}
        (output_dir / "training_config.yaml").write_text(yaml.safe_dump(combined, sort_keys=False))
    return output_dir
