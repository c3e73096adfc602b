"""A training run described by one YAML file: data, model, training and evaluation sections.

The YAML only overrides: model defaults live in the backbone config classes, corpus defaults in
`SyntheticCorpusConfig`, and training defaults (docs/spec.md section 1) in `TRAINING_DEFAULTS` below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
import yaml
from transformers import (
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
    set_seed,
)

from ..artifacts.checkpoints import checkpoint_problem, list_checkpoints, newest_complete
from ..artifacts.integrity import sha256_file, weights_record
from ..artifacts.loading import load_matcher
from ..artifacts.records import library_versions, results_record, write_json
from ..data.collator import RegionCaptionCollator
from ..data.corpora import DATA_KEYS, SYNTHETIC_SOURCE, load_corpus
from ..data.flickr30k_entities import attach_entities, write_entities_annotations
from ..data.pairs import ImageCaptionPairs, caption_table
from ..data.schema import validate_corpus
from ..data.streaming import StreamingImageCaptionPairs, load_streaming_corpus
from ..data.synthetic import SyntheticCorpusConfig
from ..errors import ConfigError, UserError, first_line
from ..evaluation.gallery import attention_metrics, evaluate_matchers, has_grounding
from ..models import BACKBONES, EnsembleModel
from ..models.backbones import SINGLE_BACKBONES
from ..models.configuration_ensemble import member_entry
from ..text.tokenization import FUNCTION_WORDS, build_word_tokenizer, scan_word_tokenizer
from .text_encoders import (
    load_text_encoder_weights,
    pretrained_text_encoder,
    pretrained_tokenizer,
    text_encoder_optimizer,
    text_encoder_options,
)
from .tracking import attach_tracking
from .trainer import MatchingTrainer

# docs/spec.md section 1: Adam (AdamW without weight decay), grad-norm clip 2.0, batch 128, lr 2e-4, decay x0.1
# at epoch 15 of 30 (Flickr30K); keep the checkpoint with the best validation rSum.
TRAINING_DEFAULTS: dict[str, Any] = {
    "optim": "adamw_torch",
    "weight_decay": 0.0,
    "learning_rate": 2e-4,
    "max_grad_norm": 2.0,
    "num_train_epochs": 30,
    "per_device_train_batch_size": 128,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "metric_for_best_model": "rsum",
    "greater_is_better": True,
    "load_best_model_at_end": True,
    "save_total_limit": 2,
    "logging_steps": 50,
    "dataloader_drop_last": True,
    "remove_unused_columns": False,
    "report_to": "none",
    "dataloader_pin_memory": torch.cuda.is_available(),
    # The Trainer would log a NaN loss as the running average (0 at first); MatchingTrainer stops instead.
    "logging_nan_inf_filter": False,
}
# Our own training keys (consumed by MatchingTrainer, not TrainingArguments).
TRAINER_KEYS = {
    "lr_decay_epochs": 15.0,
    "lr_decay_factor": 0.1,
    "collapse_guard": "warn",
    "hinge_warmup_steps": 0,
    "constraint_warmup_steps": 0,
}
TRAINER_KEY_TYPES = {
    "lr_decay_epochs": "float | None",
    "lr_decay_factor": "float",
    "collapse_guard": "str",
    "hinge_warmup_steps": "int",
    "constraint_warmup_steps": "int",
}

SECTIONS = {
    "seed": int,
    "output_dir": str,
    "data": dict,
    "model": dict,
    "training": dict,
    "evaluation": dict,
}
EVALUATION_KEYS = {"protocol": "full"}


class RunFolderError(UserError):
    """An output folder that already holds a run, without `--resume` or `--overwrite` to say what to do."""


# ---------------------------------------------------------------------------------------------------------
# YAML numbers and value types
# ---------------------------------------------------------------------------------------------------------


class ConfigLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; YAML 1.2 and every user read it as a float.

    A key written twice in one mapping is an error: PyYAML would silently keep the last value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} written twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_error_line(err: yaml.YAMLError) -> str:
    """A YAML parser error on one line: what is wrong and where (PyYAML's own text spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_yaml(text: str) -> Any:
    """Parse run-configuration YAML (a file or a `--set` value), reading `1e-3` as a float."""
    return yaml.load(text, Loader=ConfigLoader)


# Scalar types a config annotation may name; a key whose annotation names anything else is not checked here.
_SCALAR_TYPES = {"float", "int", "bool", "str", "None", "NoneType"}


def _annotation_names(annotation: Any) -> set[str]:
    """`"float | None"`, `float | None` or `Optional[float]` -> {"float", "None"}."""
    if isinstance(annotation, str):
        return {part.strip() for part in annotation.split("|")}
    args = getattr(annotation, "__args__", None)
    if args:
        return set().union(*(_annotation_names(a) for a in args))
    return {getattr(annotation, "__name__", str(annotation))}


def typed_value(value: Any, annotation: Any, key: str, where: str) -> Any:
    """`value` as the scalar type the annotation names (an int for a float, `"1e-3"` for a float, an
    integral float for an int), or ConfigError naming the key, the expected type and what was found."""
    names = _annotation_names(annotation)
    if not names <= _SCALAR_TYPES or (value is None and names & {"None", "NoneType"}):
        return value
    if "str" in names and isinstance(value, str):
        return value
    if "bool" in names and isinstance(value, bool):
        return value
    if "int" in names and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer() and "float" not in names:
            return int(value)
    if "float" in names and not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, (int, float)) and math.isfinite(number):
            return float(number)
    expected = " or ".join(sorted(n.replace("NoneType", "None").replace("None", "null") for n in names))
    raise ConfigError(f"{where}: {key} must be {expected}, found {value!r} ({type(value).__name__})")


def _typed_section(section: str, values: dict, annotations: dict[str, Any], where: str) -> dict:
    return {
        key: typed_value(value, annotations[key], f"{section}.{key}", where) if key in annotations else value
        for key, value in values.items()
    }


def _class_annotations(cls: type) -> dict[str, Any]:
    annotations: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        annotations.update(getattr(base, "__annotations__", {}))
    return {k: v for k, v in annotations.items() if not str(v).startswith("ClassVar")}


TRAINING_TYPES = {f.name: f.type for f in dataclasses.fields(TrainingArguments)} | TRAINER_KEY_TYPES
DATA_TYPES = {
    "source": "str",
    "min_word_count": "int",
    "captions_per_image": "int | None",
    "max_words": "int | None",
    "vocab": "str | None",
    "streaming": "bool",
    "shuffle_buffer": "int",
}


def _typed_model_section(model: dict[str, Any], where: str) -> dict[str, Any]:
    """A model section with its scalar options checked against its backbone config's annotations."""
    config_class = BACKBONES.get(model.get("backbone"), (None,))[0]
    if config_class is None or model.get("backbone") == "ensemble":
        members = model.get("members")
        if isinstance(members, list):
            model = {
                **model,
                "members": [_typed_model_section(m, where) if isinstance(m, dict) else m for m in members],
            }
        return model
    return _typed_section("model", model, _class_annotations(config_class), where)


@dataclasses.dataclass
class ExperimentConfig:
    seed: int
    output_dir: str
    data: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    evaluation: dict[str, Any]
    source_file: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("source_file")
        return values


def _check_keys(section: str, values: dict, allowed, where: str) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} in section {section!r}; allowed: {sorted(allowed)}"
        )


def parse_experiment_config(raw: dict[str, Any], where: str = "<dict>") -> ExperimentConfig:
    """Validate a run configuration (as read from YAML) and fill in the section defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, found {type(raw).__name__}")
    _check_keys("<top level>", raw, SECTIONS, where)
    for key, expected in SECTIONS.items():
        if key in raw and not isinstance(raw[key], expected):
            raise ConfigError(f"{where}: {key!r} must be a {expected.__name__}, found {raw[key]!r}")
    for key in ("model", "output_dir"):
        if key not in raw:
            raise ConfigError(f"{where}: missing required section {key!r}")
    data = {**DATA_KEYS, **raw.get("data", {})}
    _check_keys("data", data, DATA_KEYS, where)
    evaluation = {**EVALUATION_KEYS, **raw.get("evaluation", {})}
    _check_keys("evaluation", evaluation, EVALUATION_KEYS, where)
    model = dict(raw["model"])
    backbone = model.get("backbone")
    if backbone not in BACKBONES:
        raise ConfigError(f"{where}: model.backbone must be one of {sorted(BACKBONES)}, found {backbone!r}")
    training = dict(raw.get("training", {}))
    allowed_training = {f.name for f in dataclasses.fields(TrainingArguments)} | set(TRAINER_KEYS)
    _check_keys("training", training, allowed_training, where)
    if "output_dir" in training:
        raise ConfigError(f"{where}: set output_dir at the top level, not in 'training'")
    if data["source"] == SYNTHETIC_SOURCE:
        corpus_fields = {f.name: f.type for f in dataclasses.fields(SyntheticCorpusConfig)}
        _check_keys("data.synthetic", data["synthetic"], corpus_fields, where)
        data["synthetic"] = _typed_section("data.synthetic", data["synthetic"], corpus_fields, where)
    data = _typed_section("data", data, DATA_TYPES, where)
    training = _typed_section("training", training, TRAINING_TYPES, where)
    model = _typed_model_section(model, where)
    _check_training_ranges(training, where)
    if training.get("collapse_guard", "warn") not in ("warn", "stop", "off"):
        raise ConfigError(
            f"{where}: training.collapse_guard must be warn, stop or off, found {training['collapse_guard']!r}"
        )
    return ExperimentConfig(
        seed=raw.get("seed", 0),
        output_dir=raw["output_dir"],
        data=data,
        model=model,
        training=training,
        evaluation=evaluation,
        source_file=where,
    )


# Values TrainingArguments accepts but that cannot train: (key, lowest allowed, whether it may equal it).
_TRAINING_RANGES = (
    ("per_device_train_batch_size", 1, True),
    ("per_device_eval_batch_size", 1, True),
    ("gradient_accumulation_steps", 1, True),
    ("learning_rate", 0.0, False),
    ("num_train_epochs", 0.0, False),
    ("max_grad_norm", 0.0, True),
    ("lr_decay_factor", 0.0, True),
    ("hinge_warmup_steps", 0, True),
    ("constraint_warmup_steps", 0, True),
)


def _check_training_ranges(training: dict[str, Any], where: str) -> None:
    for key, lowest, inclusive in _TRAINING_RANGES:
        value = training.get(key)
        if value is None or isinstance(value, bool):
            continue
        if key == "num_train_epochs" and training.get("max_steps", -1) > 0:
            continue  # max_steps decides the length of the run
        if value < lowest or (value == lowest and not inclusive):
            bound = f">= {lowest}" if inclusive else f"> {lowest}"
            raise ConfigError(f"{where}: training.{key} must be {bound}, found {value!r}")


def refuse_empty_run(n_pairs: int, args: TrainingArguments, where: str) -> None:
    """A run that would take zero optimiser steps must not start (it would save the untrained model as best)."""
    global_batch = args.per_device_train_batch_size * max(args.world_size, 1)
    if args.dataloader_drop_last and n_pairs < global_batch:
        raise ConfigError(
            f"{where}: the training split has {n_pairs} image-caption pairs, fewer than one batch of "
            f"{global_batch} (training.per_device_train_batch_size x processes, with dataloader_drop_last); "
            "it would train zero steps"
        )
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise ConfigError(
            f"{where}: training.num_train_epochs is {args.num_train_epochs}: it would train zero steps"
        )


def load_experiment_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML run configuration; `overrides` maps dotted keys (`training.max_steps`) to values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_line(err)}") from err
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = raw
        for parent in parents:
            if not isinstance(node, dict):
                break
            node = node.setdefault(parent, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: cannot set {dotted}: the file has no mapping to set it in")
        node[leaf] = value
    return parse_experiment_config(raw, str(path))


def run_tokenizer(
    data: dict[str, Any], train_split: datasets.Dataset | StreamingImageCaptionPairs
) -> PreTrainedTokenizerBase:
    """SCAN's vocabulary file when `data.vocab` names one, else a vocabulary of the training captions."""
    if data["vocab"] is not None:
        return scan_word_tokenizer(data["vocab"])
    streamed = isinstance(train_split, StreamingImageCaptionPairs)
    captions = train_split.captions if streamed else caption_table(train_split)[0]
    return build_word_tokenizer(captions, data["min_word_count"])


def streaming_train_pairs(data: dict[str, Any], seed: int, where: str) -> StreamingImageCaptionPairs:
    """The train split of `data.source` as streamed pairs (checked row by row as they stream)."""
    if data["source"] == SYNTHETIC_SOURCE:
        raise ConfigError(f"{where}: data.streaming needs data.source to be a folder of corpus files")
    rows, _ = load_streaming_corpus(data["source"])
    return StreamingImageCaptionPairs(
        rows, seed, data["shuffle_buffer"], data["captions_per_image"], f"{where}: {data['source']} train"
    )


def build_model(
    model_section: dict[str, Any], tokenizer: PreTrainedTokenizerBase, feature_dim: int, where: str
) -> PreTrainedModel:
    """The backbone named by the model section, sized for the tokenizer and the data's features."""
    model_class = BACKBONES[model_section["backbone"]][1]
    model = model_class(build_config(model_section, tokenizer, feature_dim, where))
    return load_text_encoder_weights(model, model_section)


def build_config(
    model_section: dict[str, Any], tokenizer: PreTrainedTokenizerBase, feature_dim: int, where: str
) -> PreTrainedConfig:
    """The model config of a model section; an ensemble's `members` are model sections themselves."""
    backbone = model_section["backbone"]
    options = {k: v for k, v in model_section.items() if k != "backbone"}
    if backbone == "ensemble":
        members = options.pop("members", None)
        if options or not isinstance(members, list) or not members:
            raise ConfigError(f"{where}: an ensemble's model section takes exactly one key, a 'members' list")
        entries = []
        for index, member in enumerate(members):
            if not isinstance(member, dict) or member.get("backbone") not in SINGLE_BACKBONES:
                raise ConfigError(
                    f"{where}: model.members[{index}] needs a 'backbone' from {sorted(SINGLE_BACKBONES)}"
                )
            member_where = f"{where} model.members[{index}]"
            entries.append(member_entry(build_config(member, tokenizer, feature_dim, member_where)))
        options = {"members": entries}
    else:
        skip_words = options.pop("constraint_skip_words", None)
        options.update(member_options(options, tokenizer, feature_dim, where))
        options = text_encoder_options(options, where)
        if skip_words is not None:
            options["constraint_skip_token_ids"] = skip_token_ids(tokenizer, skip_words)
    try:
        return BACKBONES[backbone][0](**options)
    except Exception as err:
        raise ConfigError(f"{where}: invalid model section: {err}") from err


def member_options(
    options: dict[str, Any], tokenizer: PreTrainedTokenizerBase, feature_dim: int, where: str
) -> dict[str, Any]:
    """A single backbone's options that come from the tokenizer and the data, not from the YAML."""
    if options.get("feature_dim", feature_dim) != feature_dim:
        raise ConfigError(
            f"{where}: model.feature_dim={options['feature_dim']} but the dataset's features have {feature_dim}"
        )
    return {
        "feature_dim": feature_dim,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def skip_token_ids(tokenizer: PreTrainedTokenizerBase, words: str | list[str]) -> list[int]:
    """Token ids the constraints skip: `<start>`, `<end>` and the given words ("function_words" = FUNCTION_WORDS)."""
    words = list(FUNCTION_WORDS) if words == "function_words" else list(words)
    # The word tokenizer's <start>/<end>; a sub-word tokenizer's [CLS]/[SEP] (its bos/eos may be None).
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id}
    ids.discard(None)
    ids.update(i for i in tokenizer.convert_tokens_to_ids(words) if i != tokenizer.unk_token_id)
    return sorted(ids)


def feature_dim_of(split: datasets.Dataset | StreamingImageCaptionPairs) -> int:
    if isinstance(split, StreamingImageCaptionPairs):
        return split.feature_dim
    return int(split.with_format("numpy", columns=["features"])[0]["features"].shape[-1])


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


LOCK_FILE = "run.lock"


def check_output_dir(output_dir: Path, where: str) -> None:
    """The output folder is a writable folder, or can be made in a writable one; one line naming it otherwise."""
    if output_dir.exists() and not output_dir.is_dir():
        raise RunFolderError(f"{where}: output_dir {output_dir} is a file, expected a folder")
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"{where}: cannot create output_dir {output_dir}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"{where}: output_dir {output_dir} is not writable ({existing} is read-only)")


def _lock_holder_alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir/run.lock` for the run, so a second training into the same folder fails at once.

    Only the main process of a distributed run takes the lock (every process trains into one folder).
    A lock left by a process that no longer runs on this machine is taken over, with a message.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create output_dir {output_dir} ({first_line(err)})") from err
    lock = output_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            if _lock_holder_alive(holder):
                raise RunFolderError(
                    f"{output_dir} is in use by another training (process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, {lock}); wait for it or choose another output_dir"
                ) from None
            print(f"Taking over {lock}: process {holder.get('pid', '?')} that held it no longer runs")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as handle:
            json.dump(me, handle)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created and not any(output_dir.iterdir()):
            output_dir.rmdir()  # a run refused before writing anything leaves no folder behind


def run_experiment(
    config: ExperimentConfig, resume_from_checkpoint: str | bool | None = None, overwrite: bool = False
) -> Path:
    """Train, keep the best checkpoint by validation rSum, evaluate it on test; returns the model folder.

    The model folder holds the weights (safetensors), config with `auto_map` and modeling code, the
    tokenizer, `training_config.yaml`, `run_info.json` (seed, versions, weights sha256, sessions, history)
    and `eval_results_test.json`. It is written as `model.partial/` and renamed to `model/` when whole.
    resume_from_checkpoint: True resumes from the newest complete checkpoint, a path from that one;
    overwrite: delete the output folder's checkpoints and model first. A folder that already holds a run
    is refused without one of the two (see `resume_checkpoint`).
    """
    output_dir = Path(config.output_dir)
    check_output_dir(output_dir, config.source_file)
    with run_lock(output_dir):
        return _run_experiment(config, output_dir, resume_from_checkpoint, overwrite)


def _run_experiment(
    config: ExperimentConfig, output_dir: Path, resume_from_checkpoint: str | bool | None, overwrite: bool
) -> Path:
    checkpoint = resume_checkpoint(output_dir, resume_from_checkpoint, overwrite)
    set_seed(config.seed)
    corpus, dataset_name = load_corpus(config.data, config.seed)
    captions_per_image = config.data["captions_per_image"]
    streaming = config.data["streaming"]
    for split in ("validation", "test") if streaming else ("train", "validation", "test"):
        if split not in corpus:
            raise ConfigError(f"{config.source_file}: dataset {dataset_name} has no {split!r} split")
        validate_corpus(corpus[split], split, captions_per_image=captions_per_image)
    if streaming:
        train_split = streaming_train_pairs(config.data, config.seed, config.source_file)
    else:
        train_split = corpus["train"]
    tokenizer = run_tokenizer(config.data, train_split)
    if pretrained_text_encoder(config.model) is not None:
        tokenizer = pretrained_tokenizer(pretrained_text_encoder(config.model), config.source_file)
    model = build_model(config.model, tokenizer, feature_dim_of(train_split), config.source_file)
    training = {**TRAINING_DEFAULTS, **TRAINER_KEYS, **config.training}
    trainer_options = {key: training.pop(key) for key in TRAINER_KEYS}
    try:
        args = TrainingArguments(
            output_dir=config.output_dir, seed=config.seed, data_seed=config.seed, **training
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{config.source_file}: invalid training section: {err}") from err
    train_pairs = train_split if streaming else ImageCaptionPairs(train_split)
    if not streaming:
        refuse_empty_run(len(train_pairs), args, config.source_file)
    trainer = MatchingTrainer(
        model=model,
        args=args,
        train_dataset=train_pairs,
        eval_dataset=corpus["validation"],
        data_collator=RegionCaptionCollator(tokenizer, config.data["max_words"]),
        processing_class=tokenizer,
        eval_protocol=config.evaluation["protocol"],
        captions_per_image=captions_per_image,
        **trainer_options,
        optimizers=(text_encoder_optimizer(model, args), None),
    )
    attach_tracking(trainer, corpus["validation"])
    trainer.train(resume_from_checkpoint=checkpoint)
    model_dir, staging = output_dir / "model", output_dir / "model.partial"
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)  # left by a run killed while saving its model
    trainer.save_model(str(staging))
    # Every process takes part: under torch.distributed the gallery is scored in shards and gathered.
    test_metrics = evaluate_matchers(
        [trainer.model], [tokenizer], corpus["test"], config.evaluation["protocol"], captions_per_image
    )
    if not trainer.is_world_process_zero():
        return model_dir
    weights = weights_record(staging)
    if has_grounding(corpus["test"]) and trainer.model.config.has_cross_attention:
        test_metrics["attention"] = attention_metrics(
            trainer.model,
            tokenizer,
            grounding_through_entities_files(corpus["test"], Path(config.output_dir)),
        )
    write_json(
        staging / "eval_results_test.json",
        results_record(test_metrics, dataset_name, "test", [model_dir], {str(model_dir): weights}),
    )
    (staging / "training_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    write_json(
        staging / "run_info.json",
        {
            "seed": config.seed,
            "config_file": config.source_file,
            "dataset": dataset_name,
            "versions": library_versions(),
            "world_size": args.world_size,
            # Accumulated over every session of the run (a resumed run counts its earlier sessions too).
            "train_seconds": round(sum(s["seconds"] for s in trainer.sessions), 1),
            "sessions": trainer.sessions,
            "weights": weights,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "best_validation_rsum": trainer.state.best_metric,
            "collapse_warnings": trainer.collapse_warnings,
            "log_history": trainer.state.log_history,
        },
    )
    if model_dir.exists():
        shutil.rmtree(model_dir)  # the model of an earlier, finished session of this run (--resume)
    staging.rename(model_dir)
    return model_dir


def resume_checkpoint(output_dir: Path, resume: str | bool | None, overwrite: bool) -> str | None:
    """The checkpoint a run starts from (None: step 0), after checking what the output folder holds.

    - a folder with checkpoints or a model, and neither resume nor overwrite: RunFolderError;
    - overwrite: its checkpoints and model folders are deleted (nothing else in it);
    - resume=True: the newest complete checkpoint, said on stdout with the incomplete ones skipped;
      step 0 (said too) when there is none;
    - resume=PATH: that checkpoint, which must be complete.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pass one")
    checkpoints = list_checkpoints(output_dir)
    finished = [output_dir / name for name in ("model", "model.partial") if (output_dir / name).exists()]
    if overwrite:
        for path in [c.path for c in checkpoints] + finished:
            shutil.rmtree(path)
        return None
    if not resume:
        if checkpoints or finished:
            held = ", ".join([c.path.name for c in checkpoints] + [p.name for p in finished])
            raise RunFolderError(
                f"{output_dir} already holds a run ({held}): pass --resume to continue it from its newest "
                f"complete checkpoint, or --overwrite to delete them and start again from step 0"
            )
        return None
    if resume is not True:
        path = Path(resume)
        if not path.is_dir():
            raise ConfigError(f"--resume {path}: no such checkpoint folder")
        problem = checkpoint_problem(path)
        if problem:
            raise ConfigError(f"--resume {path}: incomplete checkpoint ({problem}); pass --resume alone")
        print(f"Resuming from {path}")
        return str(path)
    newest, skipped = newest_complete(output_dir)
    for checkpoint in skipped:
        print(f"Ignoring incomplete {checkpoint.path} ({checkpoint.problem})")
    if newest is None:
        print(f"No complete checkpoint in {output_dir}: starting from step 0")
        return None
    print(f"Resuming from {newest.path} (step {newest.step})")
    return str(newest.path)


def grounding_through_entities_files(split: datasets.Dataset, output_dir: Path) -> datasets.Dataset:
    """Write the split's phrases as Flickr30k Entities files and read them back, so the attention metrics
    of the built-in corpus go through the same reader as real Flickr30k Entities annotations."""
    entities_dir = output_dir / "flickr30k_entities_test"
    write_entities_annotations(split, entities_dir)
    return attach_entities(split.remove_columns(["phrases"]), entities_dir)
