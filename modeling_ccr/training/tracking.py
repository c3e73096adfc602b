"""Experiment tracking: what a run sends to TensorBoard (and the Trainer's other integrations).

The Trainer's own integrations (`training.report_to: tensorboard`, or any other it supports) already
receive every scalar that `MatchingTrainer.log` sees: the loss, the base loss, each constraint term and
its hinge activation rate (`ccr_loss`, `ccs_active_fraction`, ...) at each logging step, and the
validation retrieval metrics (`eval_rsum`, `eval_i2t_r1`, ...) at each evaluation.

`AttentionTrackingCallback` adds, at each evaluation of a model with cross-attention on a validation
split with boxes and grounded phrases:
- the attention metrics (`eval_attention_precision`, `eval_attention_recall`, `eval_attention_f1`),
  logged through the Trainer, so every integration receives them;
- a few attention pictures (`visualization.visualize_models`: a grounded word's attention over the
  region boxes, gold boxes dashed) as TensorBoard images `eval/attention/<image_id>`, when TensorBoard
  is among the integrations (the Trainer's generic logging carries scalars only).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import datasets
import numpy as np
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import TensorBoardCallback

from ..data.image_corpus import tower_feature_split
from ..data.schema import is_image_corpus
from ..evaluation.gallery import attention_metrics, grounded_pairs, has_grounding
from ..text.tokenization import split_words

# Attention pictures drawn at each evaluation: the first grounded caption of this many validation images.
N_PICTURES = 2
ATTENTION_SCALARS = ("attention_precision", "attention_recall", "attention_f1")


class AttentionTrackingCallback(TrainerCallback):
    """At each evaluation: attention P/R/F1 on `corpus` logged as `eval_attention_*`, and pictures.

    trainer: the Trainer to log through (its integrations receive the scalars); corpus: the validation
    split (one row per image, with `boxes` and `phrases`); n_pictures: attention pictures per evaluation.
    """

    def __init__(self, trainer: Trainer, corpus: datasets.Dataset, n_pictures: int = N_PICTURES):
        self.trainer = trainer
        self.corpus = corpus
        self.n_pictures = n_pictures
        self.pictures: list[tuple[str, int, int]] | None = None  # chosen at the first evaluation

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        tokenizer = self.trainer.processing_class
        if not state.is_world_process_zero:
            return
        # An image corpus: the regions (and their boxes) are what the tower makes of each image now, as
        # the evaluation that calls back just encoded them (encoded again only for another split).
        source, encoded = getattr(self.trainer, "evaluated_split", (None, None))
        if source is not self.corpus:
            encoded = tower_feature_split(model, self.corpus, batch_size=args.per_device_eval_batch_size)
        corpus = encoded
        metrics = attention_metrics(model, tokenizer, corpus)
        if self.pictures is None:
            self.pictures = picture_pairs(corpus, self.n_pictures)
        self.trainer.log({f"eval_{name}": float(metrics[name]) for name in ATTENTION_SCALARS})
        writer = tensorboard_writer(self.trainer)
        if writer is None or importlib.util.find_spec("matplotlib") is None:
            return  # pictures need TensorBoard to show them and matplotlib (extra `viz`) to draw them
        with tempfile.TemporaryDirectory() as folder:
            for image_id, caption_index, word_index in self.pictures:
                image = attention_picture(
                    model, tokenizer, corpus, image_id, caption_index, word_index, folder
                )
                writer.add_image(f"eval/attention/{image_id}", image, state.global_step, dataformats="HWC")
        writer.flush()


def picture_pairs(corpus: datasets.Dataset, n_pictures: int) -> list[tuple[str, int, int]]:
    """(image_id, caption index, word index) of the head word (last word) of the first grounded phrase
    of the first grounded caption, for the first `n_pictures` images that have one."""
    chosen, seen = [], set()
    image_ids = corpus["image_id"]
    for row, caption_index, phrases in grounded_pairs(corpus):
        if row in seen:
            continue
        seen.add(row)
        phrase = phrases[0]
        chosen.append((image_ids[row], caption_index, phrase["first_word"] + phrase["num_words"] - 1))
        if len(chosen) == n_pictures:
            break
    return chosen


def attention_picture(
    model,
    tokenizer,
    corpus: datasets.Dataset,
    image_id: str,
    caption_index: int,
    word_index: int,
    folder: str,
) -> np.ndarray:
    """`(height, width, 3)` uint8 RGB picture of one word's attention (drawn by `visualize_models`)."""
    from matplotlib.image import imread

    from ..evaluation.pictures import visualize_models

    caption = corpus[corpus["image_id"].index(image_id)]["captions"][caption_index]
    word = split_words(caption)[word_index]
    path = visualize_models(
        [("model", model, tokenizer)], corpus, image_id, caption_index, word_index,
        Path(folder) / f"{image_id}_{word}.png",
    )  # fmt: skip
    pixels = imread(str(path))  # PNG: float RGBA in [0, 1]
    return (pixels[..., :3] * 255).round().astype(np.uint8)


def tensorboard_writer(trainer: Trainer):
    """The SummaryWriter of the Trainer's TensorBoard integration, or None when it is not reporting."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            return callback.tb_writer
    return None


def attach_tracking(trainer: Trainer, validation: datasets.Dataset) -> None:
    """Add the attention tracking to a run whose model has cross-attention and whose validation split is
    grounded; a no-op otherwise (retrieval metrics and loss terms are logged by the Trainer anyway)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    # An image corpus's regions get their boxes from the tower: grounded phrases are all it needs.
    grounded = has_grounding(validation) or (
        is_image_corpus(validation) and "phrases" in validation.column_names
    )
    if getattr(model.config, "has_cross_attention", False) and grounded:
        trainer.add_callback(AttentionTrackingCallback(trainer, validation))
