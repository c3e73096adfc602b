"""The corpus a run or an evaluation reads: the built-in synthetic corpus or a saved `DatasetDict`.

Read by training runs, `ccr evaluate`, `ccr visualize` and the app, so it lives below all of them; so does
`DataConfig`, the data section of a run configuration, which `ccr evaluate` reads back from a model
folder's `training_config.yaml`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import datasets
import yaml

from ..errors import ConfigError, DatasetLoadError
from .config_fields import check_keys, field_types, read_section, typed_section
from .streaming import DEFAULT_SHUFFLE_BUFFER, load_streaming_corpus
from .synthetic import SyntheticCorpusConfig, build_synthetic_corpus

SYNTHETIC_SOURCE = "synthetic"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The `data:` section of a run configuration: which corpus, and how its captions become tokens."""

    # "synthetic" (the built-in corpus) or a DatasetDict folder saved with save_to_disk.
    source: str = SYNTHETIC_SOURCE
    # Options of the built-in corpus (`SyntheticCorpusConfig` fields; its seed defaults to the run's).
    synthetic: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Words seen fewer times in the training captions map to <unk>.
    min_word_count: int = 4
    captions_per_image: int | None = 5
    max_words: int | None = None
    # A SCAN vocabulary file (vocab/*_vocab.json): its ids and SCAN's word rule instead of a vocabulary
    # built from the training captions (min_word_count is then unused).
    vocab: str | None = None
    # Read the train split as a stream (docs/converters.md, "Streaming"): source is then a folder of
    # Parquet/Arrow files by split, or a save_to_disk folder; shuffle_buffer: images per shuffle buffer.
    streaming: bool = False
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    # Training-time augmentation of an image corpus (`BoxAwareAugmentation` fields: crop_scale,
    # flip_probability); boxes move with the pixels. None: every image as stored. Feature corpora: unused.
    augmentation: dict[str, Any] | None = None

    @classmethod
    def from_mapping(cls, values: Any, where: str) -> DataConfig:
        """The section as written in YAML (missing keys take the defaults above); ConfigError naming the
        file and the key for an unknown key or a value of the wrong type."""
        data = read_section(cls, "data", values, where)
        if data.augmentation is not None:
            data.box_aware_augmentation(where)  # checked now, not when the first batch is drawn
        if data.source != SYNTHETIC_SOURCE:
            return data
        if not isinstance(data.synthetic, dict):
            raise ConfigError(f"{where}: 'data.synthetic' must be a mapping, found {data.synthetic!r}")
        corpus_fields = field_types(SyntheticCorpusConfig)
        check_keys("data.synthetic", data.synthetic, corpus_fields, where)
        synthetic = typed_section("data.synthetic", data.synthetic, corpus_fields, where)
        return dataclasses.replace(data, synthetic=synthetic)

    def to_dict(self) -> dict[str, Any]:
        """The section as `training_config.yaml` records it (every key, defaults included)."""
        return dataclasses.asdict(self)

    def box_aware_augmentation(self, where: str = "data"):
        """The `augmentation` section as a `BoxAwareAugmentation` (None when unset); ConfigError naming
        the field for an unknown key or an invalid value."""
        if self.augmentation is None:
            return None
        from .image_transforms import BoxAwareAugmentation

        if not isinstance(self.augmentation, dict):
            raise ConfigError(f"{where}: 'data.augmentation' must be a mapping, found {self.augmentation!r}")
        fields = {field.name for field in dataclasses.fields(BoxAwareAugmentation)}
        unknown = sorted(set(self.augmentation) - fields)
        if unknown:
            raise ConfigError(
                f"{where}: data.augmentation: unknown key(s) {unknown}; expected some of {sorted(fields)}"
            )
        values = dict(self.augmentation)
        if "crop_scale" in values:
            scale = values["crop_scale"]
            if not isinstance(scale, (list, tuple)) or len(scale) != 2:
                raise ConfigError(
                    f"{where}: data.augmentation.crop_scale must be [low, high], found {scale!r}"
                )
            values["crop_scale"] = tuple(scale)
        try:
            return BoxAwareAugmentation(**values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: data.augmentation: {err}") from None


def load_corpus(data: DataConfig, seed: int) -> tuple[datasets.DatasetDict, str]:
    """The corpus named by the data section, and a name for it to record beside results."""
    if data.source == SYNTHETIC_SOURCE:
        corpus_config = SyntheticCorpusConfig(**{"seed": seed, **data.synthetic})
        return build_synthetic_corpus(corpus_config), f"built-in synthetic corpus (seed {corpus_config.seed})"
    path = Path(data.source)
    if not path.exists():
        raise ConfigError(
            f"data.source: no dataset at {path} (expected a DatasetDict saved with save_to_disk)"
        )
    if data.streaming:  # the splits besides train; train is streamed (streaming_train_pairs)
        return load_streaming_corpus(path)[1], str(path)
    try:
        corpus = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DatasetLoadError(
            f"data.source: {path} is not a dataset saved with save_to_disk ({str(err).splitlines()[0]})"
        ) from err
    if not isinstance(corpus, datasets.DatasetDict):
        raise DatasetLoadError(
            f"data.source: {path} holds a single Dataset; expected a DatasetDict with train/validation/test splits"
        )
    return corpus, str(path)


def load_evaluation_split(
    model_dir: str | Path, dataset: str | None, split: str
) -> tuple[datasets.Dataset, str]:
    """The split to evaluate on: a saved DatasetDict, or the corpus recorded in the model's training config."""
    if dataset is None:
        recorded = Path(model_dir) / "training_config.yaml"
        if not recorded.is_file():
            raise ConfigError(f"{model_dir} has no training_config.yaml: pass --dataset PATH")
        run = yaml.safe_load(recorded.read_text()) or {}
        data = run.get("data") if isinstance(run, dict) else None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{recorded}: expected a mapping with a `data` section, found {type(data).__name__}"
            )
        corpus, name = load_corpus(DataConfig.from_mapping(data, str(recorded)), run.get("seed", 0))
    else:
        corpus, name = load_corpus(DataConfig(source=str(dataset)), seed=0)
    if split not in corpus:
        raise DatasetLoadError(f"dataset {name} has no split {split!r}; it has {sorted(corpus)}")
    return corpus[split], name
