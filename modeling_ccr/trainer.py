"""`MatchingTrainer`: a transformers Trainer for region-word matchers.

Adds to the stock Trainer: the backbone's own loss with global-batch negatives under DDP, SCAN's step
learning-rate decay, and an `evaluate()` that ranks the whole validation gallery (best checkpoint by rSum).
"""

from __future__ import annotations

import math

import datasets
import torch
from transformers import Trainer

from .evaluation import evaluate_matchers

# Per-step values of the model output logged separately (means over the steps since the last log).
LOGGED_TERMS = ("base_loss", "ccr_loss", "ccs_loss", "ccr_active_fraction", "ccs_active_fraction")


class MatchingTrainer(Trainer):
    """Trainer whose `eval_dataset` is a one-row-per-image corpus split, scored as a full gallery.

    lr_decay_epochs: multiply the learning rate by `lr_decay_factor` every this many epochs (SCAN: 15 on
        Flickr30K, 10 on COCO); None keeps the TrainingArguments scheduler.
    eval_protocol / captions_per_image: retrieval protocol of `evaluate()` (SPEC section 5).
    """

    # The base loss is a per-batch contrastive sum: the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        lr_decay_epochs: float | None = None,
        lr_decay_factor: float = 0.1,
        eval_protocol: str = "full",
        captions_per_image: int | None = 5,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.lr_decay_epochs = lr_decay_epochs
        self.lr_decay_factor = lr_decay_factor
        self.eval_protocol = eval_protocol
        self.captions_per_image = captions_per_image
        self._term_sums: dict[str, float] = {}
        self._term_counts: dict[str, int] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        world_size = self.accelerator.num_processes
        outputs = model(**inputs, return_loss=True, gather_negatives=world_size > 1)
        if model.training:
            self._accumulate_terms(outputs)
        # DDP averages gradients over processes; each process holds its share of the global-batch
        # loss, so scaling by the world size gives the gradient of the whole global-batch loss.
        loss = outputs.loss * world_size
        return (loss, outputs) if return_outputs else loss

    def _accumulate_terms(self, outputs) -> None:
        for name in LOGGED_TERMS:
            value = getattr(outputs, name, None)
            if value is not None:
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value.detach())
                self._term_counts[name] = self._term_counts.get(name, 0) + 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds each loss term and each constraint's hinge activation rate, averaged since the last log."""
        if "loss" in logs:
            for name, total in self._term_sums.items():
                logs[name] = round(total / self._term_counts[name], 4)
            self._term_sums, self._term_counts = {}, {}
        super().log(logs, start_time)

    def steps_per_epoch(self) -> int:
        args = self.args
        global_batch = (
            args.per_device_train_batch_size * max(1, args.world_size) * args.gradient_accumulation_steps
        )
        return max(1, len(self.train_dataset) // global_batch)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_decay_epochs is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        decay_every = max(1, math.ceil(self.lr_decay_epochs * self.steps_per_epoch()))
        factor = self.lr_decay_factor
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer or self.optimizer, lambda step: factor ** (step // decay_every)
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def evaluate(
        self,
        eval_dataset: datasets.Dataset | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        corpus = eval_dataset if eval_dataset is not None else self.eval_dataset
        if corpus is None:
            raise ValueError("MatchingTrainer.evaluate needs an eval_dataset (a one-row-per-image split)")
        model = self.accelerator.unwrap_model(self.model)
        metrics = evaluate_matchers(
            [model], [self.processing_class], corpus, self.eval_protocol, self.captions_per_image
        )
        scalars = {
            f"{metric_key_prefix}_{key}": float(value)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and key != "ensemble_size"
        }
        self.log(scalars)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, scalars)
        return scalars

    def create_model_card(self, *args, **kwargs) -> None:
        """Model cards are rendered from evaluated results by `ccr push`; the Trainer's must not replace them."""
