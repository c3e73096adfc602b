"""The corpus a run or an evaluation reads: the built-in synthetic corpus or a saved `DatasetDict`.

Read by training runs, `ccr evaluate`, `ccr visualize` and the app, so it lives below all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import yaml

from ..errors import ConfigError, DatasetLoadError
from .streaming import DEFAULT_SHUFFLE_BUFFER, load_streaming_corpus
from .synthetic import SyntheticCorpusConfig, build_synthetic_corpus

SYNTHETIC_SOURCE = "synthetic"


DATA_KEYS = {
    "source": SYNTHETIC_SOURCE,
    "synthetic": {},
    "min_word_count": 4,
    "captions_per_image": 5,
    "max_words": None,
    # A SCAN vocabulary file (vocab/*_vocab.json): its ids and SCAN's word rule instead of a vocabulary
    # built from the training captions (min_word_count is then unused).
    "vocab": None,
    # Read the train split as a stream (docs/converters.md, "Streaming"): data.source is then a folder of
    # Parquet/Arrow files by split, or a save_to_disk folder; shuffle_buffer: images per shuffle buffer.
    "streaming": False,
    "shuffle_buffer": DEFAULT_SHUFFLE_BUFFER,
}


def load_corpus(data: dict[str, Any], seed: int) -> tuple[datasets.DatasetDict, str]:
    """The corpus named by the data section, and a name for it to record beside results."""
    if data["source"] == SYNTHETIC_SOURCE:
        corpus_config = SyntheticCorpusConfig(**{"seed": seed, **data["synthetic"]})
        return build_synthetic_corpus(corpus_config), f"built-in synthetic corpus (seed {corpus_config.seed})"
    path = Path(data["source"])
    if not path.exists():
        raise ConfigError(
            f"data.source: no dataset at {path} (expected a DatasetDict saved with save_to_disk)"
        )
    if data["streaming"]:  # the splits besides train; train is streamed (streaming_train_pairs)
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
        corpus, name = load_corpus({**DATA_KEYS, **data}, run.get("seed", 0))
    else:
        corpus, name = load_corpus({**DATA_KEYS, "source": dataset}, seed=0)
    if split not in corpus:
        raise DatasetLoadError(f"dataset {name} has no split {split!r}; it has {sorted(corpus)}")
    return corpus[split], name
