"""A training run described by one YAML file: validate, build, train, test on the test split, record.

The pieces live beside this module: the typed run configuration (`run_config.py`), the model and
tokenizer a run builds (`model_building.py`), the output folder with its lock and resume policy
(`run_folder.py`), the files written beside the model (`run_records.py`) and ensembles assembled from
finished runs (`ensembles.py`). Their public names are re-exported here, where runs have always found them.
"""

from __future__ import annotations

import errno
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
from transformers import TrainingArguments, set_seed

from ..artifacts.checkpoints import newest_complete
from ..data.collator import RegionCaptionCollator
from ..data.corpora import SYNTHETIC_SOURCE, DataConfig, load_corpus
from ..data.flickr30k_entities import attach_entities, write_entities_annotations
from ..data.image_corpus import tower_feature_split, training_collator, training_pairs
from ..data.schema import validate_corpus
from ..data.streaming import StreamingImageCaptionPairs, load_streaming_corpus
from ..errors import ConfigError, UserError, first_line
from ..evaluation.attention_drift import digit_scenes_drift
from ..evaluation.gallery import attention_metrics, evaluate_matchers, has_grounding
from .ensembles import assemble_ensemble
from .model_building import (
    build_config,
    build_model,
    feature_dim_of,
    region_count_of,
    run_tokenizer,
    skip_token_ids,
)
from .run_config import (
    ExperimentConfig,
    ModelSection,
    RunTrainingArguments,
    load_experiment_config,
    load_yaml,
    parse_experiment_config,
)
from .run_folder import (
    LOCK_FILE,
    RunFolderError,
    check_output_dir,
    refuse_foreign_checkpoint,
    resume_checkpoint,
    run_lock,
)
from .run_records import write_run_records
from .text_encoders import pretrained_text_encoder, pretrained_tokenizer, text_encoder_optimizer
from .tracking import attach_tracking
from .trainer import MatchingTrainer

__all__ = [
    "DATA_KEYS",
    "LOCK_FILE",
    "ConfigError",
    "DiskFullError",
    "ExperimentConfig",
    "ModelSection",
    "RunFolderError",
    "RunTrainingArguments",
    "assemble_ensemble",
    "build_config",
    "build_model",
    "check_output_dir",
    "feature_dim_of",
    "load_experiment_config",
    "load_yaml",
    "parse_experiment_config",
    "refuse_empty_run",
    "region_count_of",
    "resume_checkpoint",
    "run_experiment",
    "run_lock",
    "run_tokenizer",
    "skip_token_ids",
    "streaming_train_pairs",
]

# The data section's defaults as a mapping, derived from DataConfig, for callers written against the
# dict schema of earlier releases (a mapping passed to streaming_train_pairs is read as a data section).
DATA_KEYS: dict[str, Any] = DataConfig().to_dict()


class DiskFullError(UserError, OSError):
    """The disk filled up while a run wrote a checkpoint or its model; the message says what survived."""


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


def tower_frozen_throughout(model: Any, args: TrainingArguments, n_pairs: int) -> bool:
    """Whether the model's vision tower stays frozen (`vision_tower.freeze_steps`) for every optimizer step
    the run will take (`max_steps`, else the epochs over `n_pairs` at the global batch)."""
    tower = getattr(model, "vision_tower", None)
    if tower is None or tower.spec.get("freeze_steps", 0) <= 0:
        return False
    if args.max_steps > 0:
        total = args.max_steps
    else:
        global_batch = args.per_device_train_batch_size * max(args.world_size, 1)
        batches = n_pairs // global_batch if args.dataloader_drop_last else math.ceil(n_pairs / global_batch)
        total = math.ceil(args.num_train_epochs * math.ceil(batches / args.gradient_accumulation_steps))
    return tower.spec["freeze_steps"] >= total


def streaming_train_pairs(
    data: DataConfig | Mapping[str, Any], seed: int, where: str
) -> StreamingImageCaptionPairs:
    """The train split of `data.source` as streamed pairs (checked row by row as they stream)."""
    if not isinstance(data, DataConfig):
        data = DataConfig.from_mapping(data, where)
    if data.source == SYNTHETIC_SOURCE:
        raise ConfigError(f"{where}: data.streaming needs data.source to be a folder of corpus files")
    rows, _ = load_streaming_corpus(data.source)
    return StreamingImageCaptionPairs(
        rows, seed, data.shuffle_buffer, data.captions_per_image, f"{where}: {data.source} train"
    )


def _disk_full(err: BaseException) -> bool:
    """ENOSPC, as an OSError or inside the message of a writer that wraps it (safetensors, torch.save)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text or "StorageFull" in text


def _what_survived(output_dir: Path) -> str:
    newest, skipped = newest_complete(output_dir)
    kept = f"the checkpoints up to {newest.path} are kept" if newest else "no complete checkpoint was saved"
    if skipped:
        kept += f" ({', '.join(c.path.name for c in skipped)} is incomplete; --resume skips it)"
    return kept


def run_experiment(
    config: ExperimentConfig, resume_from_checkpoint: str | bool | None = None, overwrite: bool = False
) -> Path:
    """Train, keep the best checkpoint by validation rSum, evaluate it on test; returns the model folder.

    The model folder holds the weights (safetensors), config with `auto_map` and modeling code, the
    tokenizer, `training_config.yaml`, `run_info.json` (seed, versions, sha256 of the weights and the
    tokenizer files, sessions, history) and `eval_results_test.json`. It is written as `model.partial/`
    and renamed to `model/` when whole.
    resume_from_checkpoint: True resumes from the newest complete checkpoint, a path from that one (which
    must be a checkpoint of this run: same model config and vocabulary); overwrite: delete the output
    folder's checkpoints and model first. A folder that already holds a run is refused without one of
    the two (see `resume_checkpoint`). A full disk ends the run with DiskFullError saying what was kept.
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
    data, where = config.data, config.source_file
    corpus, dataset_name = load_corpus(data, config.seed)
    for split in ("validation", "test") if data.streaming else ("train", "validation", "test"):
        if split not in corpus:
            raise ConfigError(f"{where}: dataset {dataset_name} has no {split!r} split")
        validate_corpus(corpus[split], split, captions_per_image=data.captions_per_image)
    train_split = streaming_train_pairs(data, config.seed, where) if data.streaming else corpus["train"]
    tokenizer = run_tokenizer(data, train_split)
    text_encoder = pretrained_text_encoder(config.model.to_dict())
    if text_encoder is not None:
        tokenizer = pretrained_tokenizer(text_encoder, where)
    feature_dim = feature_dim_of(train_split, config.model, where)
    model = build_model(
        config.model, tokenizer, feature_dim, where, region_count_of(train_split, config.model, where)
    )
    refuse_foreign_checkpoint(checkpoint, model.config, tokenizer, where)
    args = config.training
    if data.streaming:
        train_pairs, collator = train_split, RegionCaptionCollator(tokenizer, data.max_words)
    else:
        train_pairs = training_pairs(train_split)
        refuse_empty_run(len(train_pairs), args, where)
        augmentation = data.box_aware_augmentation(where)
        if augmentation is None and tower_frozen_throughout(model, args, len(train_pairs)):
            # A tower frozen for every step is a fixed function of each image: encode the training images
            # once (the same features every step would recompute) and train on them as region features.
            train_split = tower_feature_split(model, train_split, batch_size=args.per_device_eval_batch_size)
            train_pairs = training_pairs(train_split)
        collator = training_collator(train_split, model, tokenizer, data.max_words, augmentation)
    trainer = MatchingTrainer(
        model=model,
        args=args,
        train_dataset=train_pairs,
        eval_dataset=corpus["validation"],
        data_collator=collator,
        processing_class=tokenizer,
        eval_protocol=config.evaluation.protocol,
        captions_per_image=data.captions_per_image,
        **args.trainer_options(),
        optimizers=(text_encoder_optimizer(model, args), None),
    )
    attach_tracking(trainer, corpus["validation"])
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        raise DiskFullError(
            f"{output_dir}: the disk is full ({first_line(err)}) while training; {_what_survived(output_dir)}; "
            "free space and run the same command with --resume"
        ) from err
    model_dir, staging = output_dir / "model", output_dir / "model.partial"
    try:
        return _save_model(trainer, config, tokenizer, corpus, dataset_name, model_dir, staging)
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)  # an incomplete model folder, and the space it took
        raise DiskFullError(
            f"{output_dir}: the disk is full ({first_line(err)}) while saving the model; the incomplete "
            f"{staging.name} was deleted, {_what_survived(output_dir)}; free space and run the same command "
            "with --resume (it saves the model again)"
        ) from err


def _save_model(
    trainer: MatchingTrainer,
    config: ExperimentConfig,
    tokenizer: Any,
    corpus: datasets.DatasetDict,
    dataset_name: str,
    model_dir: Path,
    staging: Path,
) -> Path:
    """Save the trained (best) model as `staging`, test it, write its records, rename it to `model_dir`."""
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)  # left by a run killed while saving its model
    trainer.save_model(str(staging))
    # An image corpus is seen as the tower's region features (each image encoded once, no gradients).
    test = tower_feature_split(
        trainer.model, corpus["test"], batch_size=config.training.per_device_eval_batch_size
    )
    # Every process takes part: under torch.distributed the gallery is scored in shards and gathered.
    test_metrics = evaluate_matchers(
        [trainer.model],
        [tokenizer],
        test,
        config.evaluation.protocol,
        config.data.captions_per_image,
    )
    if not trainer.is_world_process_zero():
        return model_dir
    if has_grounding(test) and trainer.model.config.has_cross_attention:
        test_metrics["attention"] = attention_metrics(
            trainer.model,
            tokenizer,
            grounding_through_entities_files(test, Path(config.output_dir)),
        )
        source = None if config.data.source == SYNTHETIC_SOURCE else config.data.source
        drift = digit_scenes_drift(trainer.model, tokenizer, test, source, "test")
        if (
            drift is not None
        ):  # digit scenes: where a digit word's attention goes (own digit, habitat texture)
            test_metrics["attention_drift"] = drift
    write_run_records(staging, model_dir, config, trainer, test_metrics, dataset_name)
    if model_dir.exists():
        shutil.rmtree(model_dir)  # the model of an earlier, finished session of this run (--resume)
    staging.rename(model_dir)
    return model_dir


def grounding_through_entities_files(split: datasets.Dataset, output_dir: Path) -> datasets.Dataset:
    """Write the split's phrases as Flickr30k Entities files and read them back, so the attention metrics
    of the built-in corpus go through the same reader as real Flickr30k Entities annotations."""
    entities_dir = output_dir / "flickr30k_entities_test"
    write_entities_annotations(split, entities_dir)
    return attach_entities(split.remove_columns(["phrases"]), entities_dir)
