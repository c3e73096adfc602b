"""The run configuration: one YAML file whose sections are typed classes holding every default once.

```yaml
seed: 0                 # seeds the corpus draw, the initialisation and the data order
output_dir: runs/demo
data: {...}             # DataConfig (data/corpora.py: `ccr evaluate` reads it back, below training/)
model: {backbone: scan, ...}   # ModelSection: the options go through to the backbone's config class
training: {...}         # RunTrainingArguments: TrainingArguments with the paper's defaults + our keys
evaluation: {...}       # EvaluationConfig
```

The YAML only overrides. Model defaults and types live in the backbone config classes (`models/`), which
the model section is checked against and passed through to; corpus defaults in `SyntheticCorpusConfig`.
Every error names the file, the field, what was expected and what was found (data/config_fields.py).
"""

import contextlib
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy
from transformers.training_args import OptimizerNames

from ..data.config_fields import FieldValueError, check_choices, check_keys, read_section, typed_section
from ..data.corpora import DataConfig
from ..errors import ConfigError
from ..metrics.eccv import PROTOCOL as ECCV_PROTOCOL
from ..metrics.retrieval import PROTOCOLS
from ..models import BACKBONES
from ..models.backbones import SINGLE_BACKBONES
from ..models.configuration_matcher import is_finite_number
from .trainer import COLLAPSE_GUARDS

ENSEMBLE = "ensemble"
# Marks the RunTrainingArguments fields that MatchingTrainer takes as keyword arguments.
MATCHING_TRAINER = "matching_trainer"


# ---------------------------------------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunTrainingArguments(TrainingArguments):
    """The `training:` section: `TrainingArguments` with the paper's defaults, and MatchingTrainer's keys.

    docs/spec.md section 1: Adam (AdamW without weight decay), grad-norm clip 2.0, batch 128, lr 2e-4,
    decay x0.1 at epoch 15 of 30 (Flickr30K); keep the checkpoint with the best validation rSum.
    `output_dir`, `seed` and `data_seed` come from the top level of the run config.
    """

    optim: OptimizerNames | str = dataclasses.field(
        default="adamw_torch", metadata={"help": "Adam as in the paper (AdamW without weight decay)."}
    )
    weight_decay: float = dataclasses.field(default=0.0, metadata={"help": "No weight decay (Adam)."})
    learning_rate: float = dataclasses.field(default=2e-4, metadata={"help": "The initial learning rate."})
    max_grad_norm: float = dataclasses.field(default=2.0, metadata={"help": "Gradient-norm clip."})
    num_train_epochs: float = dataclasses.field(default=30, metadata={"help": "Epochs (Flickr30K: 30)."})
    per_device_train_batch_size: int = dataclasses.field(
        default=128, metadata={"help": "Images x captions pairs per device and step."}
    )
    eval_strategy: IntervalStrategy | str = dataclasses.field(
        default="epoch", metadata={"help": "Validation retrieval after every epoch."}
    )
    save_strategy: SaveStrategy | str = dataclasses.field(
        default="epoch", metadata={"help": "A checkpoint after every epoch."}
    )
    metric_for_best_model: str | None = dataclasses.field(
        default="rsum", metadata={"help": "The best checkpoint is the one of the best validation rSum."}
    )
    greater_is_better: bool | None = dataclasses.field(default=True, metadata={"help": "rSum: higher."})
    load_best_model_at_end: bool = dataclasses.field(
        default=True, metadata={"help": "The saved model is the best checkpoint, not the last."}
    )
    save_total_limit: int | None = dataclasses.field(
        default=2, metadata={"help": "Checkpoints kept (the best is always kept)."}
    )
    logging_steps: float = dataclasses.field(default=50, metadata={"help": "Log every this many steps."})
    dataloader_drop_last: bool = dataclasses.field(
        default=True, metadata={"help": "Every step sees a full batch of negatives."}
    )
    remove_unused_columns: bool = dataclasses.field(
        default=False, metadata={"help": "The collator needs the corpus columns the model does not take."}
    )
    report_to: str | list[str] | None = dataclasses.field(
        default="none", metadata={"help": "No integration unless asked for."}
    )
    dataloader_pin_memory: bool = dataclasses.field(
        default=torch.cuda.is_available(), metadata={"help": "Pinned memory only where there is a GPU."}
    )
    logging_nan_inf_filter: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "The Trainer would log a NaN loss as the running average (0 at first); "
            "MatchingTrainer stops instead."
        },
    )
    # MatchingTrainer's own keys (not TrainingArguments'; see its docstring).
    # `list`, not `list[float]`: the section reader types scalar annotations only, and would refuse a list
    # for a `float`; `decay_schedule` checks both forms.
    lr_decay_epochs: float | list | None = dataclasses.field(
        default=15.0,
        metadata={
            "help": "A number: multiply the learning rate by lr_decay_factor every this many epochs "
            "(SCAN: 15 on Flickr30K, 10 on COCO). A list of increasing epochs: multiply it once at each "
            "(LAPS: [9, 15, 20, 25]). null keeps the TrainingArguments scheduler.",
            MATCHING_TRAINER: True,
        },
    )
    lr_decay_factor: float = dataclasses.field(
        default=0.1, metadata={"help": "See lr_decay_epochs.", MATCHING_TRAINER: True}
    )
    collapse_guard: str = dataclasses.field(
        default="warn",
        metadata={
            "help": "Validation retrieval at or below chance after the first epoch: warn, stop, or off.",
            "choices": COLLAPSE_GUARDS,
            MATCHING_TRAINER: True,
        },
    )
    hinge_warmup_steps: int = dataclasses.field(
        default=0,
        metadata={
            "help": "Steps with the hinge summed over negatives before the hardest-negative hinge.",
            MATCHING_TRAINER: True,
        },
    )
    constraint_warmup_steps: int = dataclasses.field(
        default=0,
        metadata={"help": "Steps on the base loss alone before CCR/CCS take effect.", MATCHING_TRAINER: True},
    )

    # Values TrainingArguments accepts but that cannot train: field -> (lowest allowed, whether it may equal it).
    RANGES: ClassVar[dict[str, tuple[float, bool]]] = {
        "per_device_train_batch_size": (1, True),
        "per_device_eval_batch_size": (1, True),
        "gradient_accumulation_steps": (1, True),
        "learning_rate": (0.0, False),
        "num_train_epochs": (0.0, False),
        "max_grad_norm": (0.0, True),
        "lr_decay_factor": (0.0, True),
        "hinge_warmup_steps": (0, True),
        "constraint_warmup_steps": (0, True),
    }

    def __post_init__(self) -> None:
        self.lr_decay_epochs = decay_schedule(self.lr_decay_epochs)
        check_choices(self, "training", self.trainer_options())
        for key, (lowest, inclusive) in self.RANGES.items():
            value = getattr(self, key)
            if value is None or isinstance(value, bool):
                continue
            if key == "num_train_epochs" and self.max_steps > 0:
                continue  # max_steps decides the length of the run
            if value < lowest or (value == lowest and not inclusive):
                bound = f">= {lowest}" if inclusive else f"> {lowest}"
                raise FieldValueError(f"training.{key} must be {bound}, found {value!r}")
        super().__post_init__()

    def trainer_options(self) -> dict[str, Any]:
        """The keyword arguments of MatchingTrainer (lr_decay_epochs, collapse_guard, ...)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get(MATCHING_TRAINER)
        }


DECAY_SCHEDULE = (
    "a positive number of epochs (a period), a non-empty strictly increasing list of positive epochs "
    "(milestones) or null"
)


def decay_schedule(value: Any, key: str = "training.lr_decay_epochs") -> float | list[float] | None:
    """`lr_decay_epochs` checked: a period as a float (a number in quotes too, as every float key takes
    it), milestones as a list of floats, or None; FieldValueError naming the key otherwise."""
    if value is None:
        return None
    period = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            period = float(value)
    if is_finite_number(period) and period > 0:
        return float(period)
    if not isinstance(value, (list, tuple)):
        raise FieldValueError(f"{key} must be {DECAY_SCHEDULE}, found {value!r} ({type(value).__name__})")
    if not value:
        raise FieldValueError(f"{key} must be {DECAY_SCHEDULE}, found an empty list")
    for i, epoch in enumerate(value):
        if not is_finite_number(epoch) or epoch <= 0:
            raise FieldValueError(
                f"{key}[{i}] must be a positive finite number of epochs, "
                f"found {epoch!r} ({type(epoch).__name__})"
            )
    for i in range(1, len(value)):
        if value[i] <= value[i - 1]:
            raise FieldValueError(
                f"{key} must be strictly increasing, "
                f"found {value[i]!r} after {value[i - 1]!r} in {list(value)!r}"
            )
    return [float(epoch) for epoch in value]


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """The `evaluation:` section: how validation (best checkpoint) and the test split are scored."""

    protocol: str = dataclasses.field(
        default="full",
        metadata={
            "help": "Retrieval protocol (docs/spec.md section 5).",
            "choices": (*PROTOCOLS, ECCV_PROTOCOL),
        },
    )

    def __post_init__(self) -> None:
        check_choices(self, "evaluation")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_class_options(cls: type) -> dict[str, Any]:
    """A model config class's typed options (its own annotations and its bases'), ClassVars left out."""
    annotations: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        annotations.update(getattr(base, "__annotations__", {}))
    return {k: v for k, v in annotations.items() if not str(v).startswith("ClassVar")}


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The `model:` section: which backbone, and the options passed through to its config class.

    The config class (e.g. `ScanConfig`) holds the model's defaults and types, so they are not declared
    here: `options` are typed against its annotations and refused by it when unknown (`build_config`).
    An ensemble has no options of its own, only `members`, each a single backbone's section.
    """

    backbone: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    members: tuple["ModelSection", ...] = ()

    @classmethod
    def from_mapping(cls, values: Any, where: str) -> "ModelSection":
        """The section as written in YAML; ConfigError naming the file and the key when it is malformed."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: 'model' must be a dict, found {values!r}")
        options = dict(values)
        backbone = options.pop("backbone", None)
        if backbone not in BACKBONES:
            raise ConfigError(
                f"{where}: model.backbone must be one of {sorted(BACKBONES)}, found {backbone!r}"
            )
        if backbone != ENSEMBLE:
            config_class = BACKBONES[backbone][0]
            return cls(backbone, typed_section("model", options, config_class_options(config_class), where))
        members = options.pop("members", None)
        if options or not isinstance(members, list) or not members:
            raise ConfigError(f"{where}: an ensemble's model section takes exactly one key, a 'members' list")
        sections = []
        for index, member in enumerate(members):
            if not isinstance(member, Mapping) or member.get("backbone") not in SINGLE_BACKBONES:
                raise ConfigError(
                    f"{where}: model.members[{index}] needs a 'backbone' from {sorted(SINGLE_BACKBONES)}"
                )
            sections.append(cls.from_mapping(member, where))
        return cls(backbone, members=tuple(sections))

    def to_dict(self) -> dict[str, Any]:
        """The section as written in YAML (and recorded in `training_config.yaml`)."""
        if self.backbone == ENSEMBLE:
            return {"backbone": self.backbone, "members": [member.to_dict() for member in self.members]}
        return {"backbone": self.backbone, **self.options}


@dataclasses.dataclass
class ExperimentConfig:
    """A whole run configuration, each section typed; `training_set` holds the training keys the file
    set (what `training_config.yaml` and the model card record: the rest took the defaults)."""

    seed: int
    output_dir: str
    data: DataConfig
    model: ModelSection
    training: RunTrainingArguments
    evaluation: EvaluationConfig
    training_set: dict[str, Any] = dataclasses.field(default_factory=dict)
    source_file: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        """The configuration as `training_config.yaml` records it."""
        return {
            "seed": self.seed,
            "output_dir": self.output_dir,
            "data": self.data.to_dict(),
            "model": self.model.to_dict(),
            "training": dict(self.training_set),
            "evaluation": self.evaluation.to_dict(),
        }


# ---------------------------------------------------------------------------------------------------------
# Reading YAML
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


# The top level of a run config: key -> the YAML type it must have.
TOP_LEVEL = {
    "seed": int,
    "output_dir": str,
    "data": dict,
    "model": dict,
    "training": dict,
    "evaluation": dict,
}
# TrainingArguments fields a run sets from the top level, never from the training section.
FROM_TOP_LEVEL = {"output_dir": "output_dir", "seed": "seed", "data_seed": "seed"}


def parse_experiment_config(raw: dict[str, Any], where: str = "<dict>") -> ExperimentConfig:
    """Validate a run configuration (as read from YAML) and fill in the section defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, found {type(raw).__name__}")
    check_keys("<top level>", raw, TOP_LEVEL, where)
    for key, expected in TOP_LEVEL.items():
        if key in raw and (
            not isinstance(raw[key], expected) or (expected is int and isinstance(raw[key], bool))
        ):
            raise ConfigError(f"{where}: {key!r} must be a {expected.__name__}, found {raw[key]!r}")
    for key in ("model", "output_dir"):
        if key not in raw:
            raise ConfigError(f"{where}: missing required section {key!r}")
    seed, output_dir = raw.get("seed", 0), raw["output_dir"]
    data = DataConfig.from_mapping(raw.get("data", {}), where)
    evaluation = read_section(EvaluationConfig, "evaluation", raw.get("evaluation", {}), where)
    model = ModelSection.from_mapping(raw["model"], where)
    training = dict(raw.get("training", {}))
    if "lr_decay_epochs" in training:
        # Typed here, before the section reader, so that training_config.yaml records what the run used.
        try:
            training["lr_decay_epochs"] = decay_schedule(training["lr_decay_epochs"])
        except FieldValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    for key, top in FROM_TOP_LEVEL.items():
        if key in training:
            raise ConfigError(
                f"{where}: set {top} at the top level, not in 'training' (found training.{key})"
            )
    args = read_section(
        RunTrainingArguments, "training", training, where, output_dir=output_dir, seed=seed, data_seed=seed
    )
    return ExperimentConfig(
        seed=seed,
        output_dir=output_dir,
        data=data,
        model=model,
        training=args,
        evaluation=evaluation,
        training_set=typed_section(
            "training", training, {f.name: f.type for f in dataclasses.fields(args)}, where
        ),
        source_file=where,
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
