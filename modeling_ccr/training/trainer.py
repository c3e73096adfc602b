"""`MatchingTrainer`: a transformers Trainer for region-word matchers.

Adds to the stock Trainer: the backbone's own loss with global-batch negatives under DDP, SCAN's step
learning-rate decay, an `evaluate()` that ranks the whole validation gallery (best checkpoint by rSum),
and the guards of a long run: a non-finite loss or gradient stops training at once (naming the step,
the batch's image ids and the term), no checkpoint or model with non-finite weights is written, every
checkpoint is marked complete only once fully written (`checkpoints.py`), and a validation retrieval at
or below chance after the first epoch is reported.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer_utils import TrainOutput

from ..artifacts.checkpoints import mark_complete, newest_complete, read_marker, rotate_checkpoints
from ..data.image_corpus import tower_feature_split
from ..data.schema import MAX_FEATURE_MAGNITUDE
from ..errors import UserError
from ..evaluation.gallery import evaluate_matchers
from ..metrics.retrieval import chance_metrics

# Per-step values of the model output logged separately (means over the steps since the last log).
LOGGED_TERMS = (
    "base_loss",
    "ccr_loss",
    "ccs_loss",
    "ccr_active_fraction",
    "ccs_active_fraction",
    "global_loss",
    "global_contrastive_loss",
    "global_distill_loss",
)
# The loss terms a non-finite loss or gradient is traced to, with the names users know them by.
LOSS_TERMS = {"base_loss": "base", "ccr_loss": "CCR", "ccs_loss": "CCS", "global_loss": "global head"}
COLLAPSE_GUARDS = ("warn", "stop", "off")
# Image ids named in a one-line error; divergence.json in the output folder lists them all.
SHOWN_IMAGE_IDS = 8


class TrainingDivergedError(UserError, FloatingPointError):
    """A non-finite loss, gradient or weight: training stopped, nothing was saved after the last good checkpoint."""


class TrainingCollapsedError(UserError):
    """Validation retrieval at or below chance after the first epoch, with `collapse_guard: stop`."""


class CollapseWarning(UserWarning):
    """Validation retrieval at or below chance after the first epoch."""


class VisionTowerFreezeCallback(TrainerCallback):
    """Keep a model's vision tower frozen (no gradient, eval mode) for the first `freeze_steps` optimizer
    steps, then let it train: the new region projection and text side settle first, so their random
    gradients never reach the pretrained tower. Resuming past `freeze_steps` starts with the tower free."""

    def __init__(self, freeze_steps: int):
        self.freeze_steps = freeze_steps

    def _apply(self, state: TrainerState, model) -> None:
        tower = getattr(getattr(model, "module", model), "vision_tower", None)
        if tower is not None:
            frozen = state.global_step < self.freeze_steps
            if tower.frozen != frozen:
                tower.set_frozen(frozen)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        tower = getattr(getattr(model, "module", model), "vision_tower", None)
        if tower is not None:
            tower.set_frozen(False)


class MatchingTrainer(Trainer):
    """Trainer whose `eval_dataset` is a one-row-per-image corpus split, scored as a full gallery.

    lr_decay_epochs: a number: multiply the learning rate by `lr_decay_factor` every this many epochs (SCAN:
        15 on Flickr30K, 10 on COCO); a sequence of increasing epochs: multiply it once at each (LAPS:
        [9, 15, 20, 25]); None keeps the TrainingArguments scheduler. An epoch e is step
        ceil(e * steps_per_epoch()), the first step trained at the lower rate.
    eval_protocol / captions_per_image: retrieval protocol of `evaluate()` (docs/spec.md section 5).
    hinge_warmup_steps: train this many steps with the hinge summed over negatives before the model's
        hardest-negative hinge (`max_violation`) takes over; 0 = no warm-up.
    constraint_warmup_steps: train this many steps on the base loss alone before the model's CCR/CCS
        weights take effect; 0 = constraints from the first step.

    A model with a vision tower trains from an image corpus (`data/image_corpus.ImagePairs` with
    `ImageCaptionCollator`); its `vision_tower.freeze_steps` are applied by `VisionTowerFreezeCallback`,
    its own learning rate by the optimiser (`text_encoders.text_encoder_optimizer`), and evaluation on an
    image corpus encodes each image once through the tower (`tower_feature_split`) before scoring.
    """

    # The base loss is a per-batch contrastive sum: the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        lr_decay_epochs: float | Sequence[float] | None = None,
        lr_decay_factor: float = 0.1,
        eval_protocol: str = "full",
        captions_per_image: int | None = 5,
        collapse_guard: str = "warn",
        hinge_warmup_steps: int = 0,
        constraint_warmup_steps: int = 0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if collapse_guard not in COLLAPSE_GUARDS:
            raise ValueError(f"collapse_guard must be one of {COLLAPSE_GUARDS}, got {collapse_guard!r}")
        self.lr_decay_epochs = lr_decay_epochs
        self.lr_decay_factor = lr_decay_factor
        self.eval_protocol = eval_protocol
        self.captions_per_image = captions_per_image
        self.collapse_guard = collapse_guard
        self.collapse_warnings: list[str] = []
        self.hinge_warmup_steps = hinge_warmup_steps
        self.constraint_warmup_steps = constraint_warmup_steps
        self._term_sums: dict[str, float] = {}
        self._term_counts: dict[str, int] = {}
        self._step_inputs: list[dict[str, Any]] = []  # the micro-batches of the optimizer step in progress
        # Earlier sessions of this run (from the resumed checkpoint's marker) and the current one.
        self.sessions: list[dict[str, Any]] = []
        self._session: dict[str, Any] = {}
        self._session_started = time.time()
        tower = getattr(self.model.config, "vision_tower", None) or {}
        if tower.get("freeze_steps", 0) > 0:
            self.add_callback(VisionTowerFreezeCallback(tower["freeze_steps"]))

    # -------------------------------------------------------------------------------------------------
    # Sessions: a run's training time and resumptions accumulate across interrupted sessions
    # -------------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Train; `resume_from_checkpoint` must be a path (experiment.py picks the newest complete one)."""
        previous = read_marker(resume_from_checkpoint) if isinstance(resume_from_checkpoint, str) else {}
        self.sessions = list(previous.get("sessions", []))
        self._session = {
            "resumed_from": Path(resume_from_checkpoint).name
            if isinstance(resume_from_checkpoint, str)
            else None,
            "start_step": int(previous.get("step", 0)),
        }
        self._session_started = time.time()
        try:
            if isinstance(resume_from_checkpoint, str) and self._finished_at(resume_from_checkpoint):
                return self._restore_finished(resume_from_checkpoint)
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            self.sessions = self.sessions_so_far()

    def hyperparameter_search(self, *args, **kwargs):
        """Not supported: checkpoints are marked and rotated in `args.output_dir`, not per-trial folders."""
        raise NotImplementedError(
            "MatchingTrainer does not support hyperparameter_search: its complete-checkpoint markers and "
            "rotation live in args.output_dir, while the Trainer saves each trial's checkpoints in a "
            "subfolder"
        )

    def _finished_at(self, checkpoint: str) -> bool:
        """Whether a checkpoint was saved at the run's last step (a run killed while saving its model)."""
        state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        return 0 < state.max_steps <= state.global_step

    def _restore_finished(self, checkpoint: str) -> TrainOutput:
        """The end of a run from its last checkpoint, without training: the Trainer, resumed at max_steps,
        would run one step more before it stops (changing the weights unless the best model is reloaded)."""
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        # Private Trainer members, kept (tests/test_trainer_private_members.py guards them): no public
        # Trainer method loads a checkpoint's weights without training. `train(resume_from_checkpoint=)`
        # is the only public route and it runs the extra step this method exists to avoid; a hand-made
        # safetensors load would lose the Trainer's handling of sharded, FSDP, DeepSpeed and adapter
        # checkpoints. `_load_best_model` is what `train()` itself runs at its end for
        # `load_best_model_at_end` (from `state.best_model_checkpoint`), so the result matches a run
        # that ended normally.
        self._load_from_checkpoint(checkpoint)
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint is not None:
            self._load_best_model()
        return TrainOutput(self.state.global_step, float("nan"), {})

    def sessions_so_far(self) -> list[dict[str, Any]]:
        """Every training session of this run up to now: where it resumed from, its steps and seconds."""
        current = {
            **self._session,
            "end_step": self.state.global_step,
            "seconds": round(time.time() - self._session_started, 1),
        }
        return [*self.sessions, current] if self._session else list(self.sessions)

    # -------------------------------------------------------------------------------------------------
    # Loss, and stopping at the first non-finite loss or gradient
    # -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _warmup(self, model):
        """Config values that hold only during the warm-up steps, restored after the step.

        `hinge_warmup_steps`: the hinge sums over all negatives instead of taking the hardest; from
        scratch, the hardest-negative hinge can sit on the plateau where every pair scores the same
        (benchmarks/hinge_plateau.py: SGR never leaves it). `constraint_warmup_steps`: CCR/CCS weights
        are 0, so the constraints start pulling on attention only once the embeddings are aligned.
        """
        config = self.accelerator.unwrap_model(model).config
        step = self.state.global_step
        overrides = {}
        if model.training and step < self.hinge_warmup_steps and getattr(config, "max_violation", False):
            overrides["max_violation"] = False  # an ensemble has no hinge of its own
        if model.training and step < self.constraint_warmup_steps:
            for name in ("ccr_weight", "ccs_weight"):
                if getattr(config, name, 0.0) > 0:
                    overrides[name] = 0.0
        saved = {name: getattr(config, name) for name in overrides}
        for name, value in overrides.items():
            setattr(config, name, value)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(config, name, value)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._step_inputs.append(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        world_size = self.accelerator.num_processes
        with self._warmup(model):
            outputs = model(**inputs, return_loss=True, gather_negatives=world_size > 1)
        if model.training:
            if not torch.isfinite(outputs.loss):
                self._stop_diverged("loss", _nonfinite_terms(outputs), model)
            self._accumulate_terms(outputs)
        # DDP averages gradients over processes; each process holds its share of the global-batch
        # loss, so scaling by the world size gives the gradient of the whole global-batch loss.
        loss = outputs.loss * world_size
        return (loss, outputs) if return_outputs else loss

    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer's gradient norm, checked before the optimizer step can spread a non-finite value.

        A private Trainer member, kept (tests/test_trainer_private_members.py guards it): it is the only
        place that sees the step's gradient norm before `optimizer.step()`. The public events around it
        (`on_pre_optimizer_step`, `on_optimizer_step`, `on_step_end`) receive no grad norm, and
        `log()` sees it only on logging steps, after the step; recomputing the norm in a callback would
        add a pass over every gradient per step, read already-clipped gradients (an overflowed norm
        clips them to zeros) and miss DeepSpeed, whose gradients are not in `param.grad`.
        """
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            self._stop_diverged("gradient", self._nonfinite_gradient_terms(model), model)
        self._step_inputs = []
        return grad_norm

    def _nonfinite_gradient_terms(self, model) -> dict[str, float]:
        """Recompute the step's loss terms and differentiate each alone: the terms with a non-finite gradient.

        Runs only after a non-finite gradient, on the unwrapped model with local negatives (no collective
        calls), so that it can name the term without costing anything in a healthy run.
        """
        module = self.accelerator.unwrap_model(model)
        parameters = [p for p in module.parameters() if p.requires_grad]
        found: dict[str, float] = {}
        for inputs in self._step_inputs:
            outputs = module(**inputs, return_loss=True)
            for name, label in LOSS_TERMS.items():
                term = getattr(outputs, name, None)
                if term is None or label in found or not term.requires_grad:
                    continue
                grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
                if not all(g is None or bool(torch.isfinite(g).all()) for g in grads):
                    found[label] = float(term.detach())
        return found

    def _stop_diverged(self, what: str, terms: dict[str, float], model) -> None:
        """Raise TrainingDivergedError naming the step, the batch's image ids, the terms and the likely cause."""
        step = self.state.global_step + 1
        image_ids = self._batch_image_ids()
        causes = _likely_causes(self.accelerator.unwrap_model(model), self._step_inputs)
        newest, _ = newest_complete(self.args.output_dir)
        kept = f"the last good checkpoint is {newest.path}" if newest else "no checkpoint was saved yet"
        named = ", ".join(f"{label} ({value:g})" for label, value in terms.items()) or "no single term"
        report = Path(self.args.output_dir) / "divergence.json"
        if self.is_world_process_zero():
            report.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "step": step,
                "non_finite": what,
                "terms": terms,
                "causes": causes,
                "image_ids": image_ids,
            }
            report.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        shown = ", ".join(map(repr, image_ids[:SHOWN_IMAGE_IDS]))
        more = f" and {len(image_ids) - SHOWN_IMAGE_IDS} more" if len(image_ids) > SHOWN_IMAGE_IDS else ""
        raise TrainingDivergedError(
            f"training stopped at step {step}: non-finite {what} from the {named} term(s) on the batch of "
            f"images [{shown}{more}]{'; ' + '; '.join(causes) if causes else ''}; {kept} (nothing was saved "
            f"after it; details in {report})"
        )

    def _batch_image_ids(self) -> list[str]:
        """Image ids of the step's micro-batches (dataset row numbers when the corpus has no image_id)."""
        rows = sorted({int(i) for inputs in self._step_inputs for i in inputs["image_index"].tolist()})
        corpus = getattr(self.train_dataset, "dataset", None)
        if corpus is None or "image_id" not in corpus.column_names:
            return [f"row {row}" for row in rows]
        return [str(i) for i in corpus.select(rows)["image_id"]]

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

    # -------------------------------------------------------------------------------------------------
    # Saving: complete checkpoints only, never non-finite weights
    # -------------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model, unless a weight is non-finite (TrainingDivergedError: nothing is written)."""
        bad = nonfinite_parameters(self.accelerator.unwrap_model(self.model))
        if bad:
            newest, _ = newest_complete(self.args.output_dir)
            kept = f"the last good checkpoint is {newest.path}" if newest else "no checkpoint was saved"
            raise TrainingDivergedError(
                f"not saving {output_dir or self.args.output_dir} at step {self.state.global_step}: "
                f"{len(bad)} weight tensor(s) are non-finite ({', '.join(bad[:3])}); the updates diverged: "
                f"lower training.learning_rate; {kept}"
            )
        super().save_model(output_dir, _internal_call)
        model = self.accelerator.unwrap_model(self.model)
        if getattr(model, "vision_tower", None) is not None and self.args.should_save:
            # `AutoProcessor.from_pretrained(folder)`: the tower's image processor with the tokenizer.
            from ..models.processing_matcher import MatcherProcessor

            MatcherProcessor(model.image_processor(), self.processing_class).save_pretrained(
                output_dir or self.args.output_dir
            )

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, marked complete once fully written, then the older ones rotated.

        The Trainer's own rotation is held back until the marker is written, so an interrupted write can
        never leave the run with fewer complete checkpoints than before it.

        A private Trainer member, kept (tests/test_trainer_private_members.py guards it): the public
        `on_save` event fires only after `_save_checkpoint` has returned, by which time the Trainer has
        already rotated (deleted) older checkpoints against `save_total_limit`; no public hook runs
        between the checkpoint being written and that rotation, nor lets us hold the rotation back.
        """
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if not self.args.should_save:
            return
        # The checkpoint's folder: `args.output_dir`, which is what the Trainer's private
        # `_get_output_dir` returns outside a hyperparameter search (refused by `hyperparameter_search`).
        run_dir = Path(self.args.output_dir)
        step = self.state.global_step
        mark_complete(run_dir / f"checkpoint-{step}", {"step": step, "sessions": self.sessions_so_far()})
        best = self.state.best_model_checkpoint
        rotate_checkpoints(run_dir, limit, {Path(best)} if best else set())

    def steps_per_epoch(self) -> int:
        args = self.args
        global_batch = (
            args.per_device_train_batch_size * max(1, args.world_size) * args.gradient_accumulation_steps
        )
        return max(1, len(self.train_dataset) // global_batch)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_decay_epochs is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        factor = self.lr_decay_factor
        if isinstance(self.lr_decay_epochs, (list, tuple)):
            # A function of the step alone, as the period's: a resumed run's scheduler (its step restored
            # from the checkpoint) gives the rate the uninterrupted run had.
            milestones = [math.ceil(epoch * self.steps_per_epoch()) for epoch in self.lr_decay_epochs]

            def schedule(step: int) -> float:
                return factor ** bisect.bisect_right(milestones, step)

        else:
            decay_every = max(1, math.ceil(self.lr_decay_epochs * self.steps_per_epoch()))

            def schedule(step: int) -> float:
                return factor ** (step // decay_every)

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, schedule)
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
        # An image corpus is encoded once through the vision tower (no gradient, batches, model's device);
        # kept with its source for the callbacks of this evaluation (the attention tracking reads it).
        source = corpus
        corpus = tower_feature_split(model, corpus, batch_size=self.args.per_device_eval_batch_size)
        self.evaluated_split = (source, corpus)
        metrics = evaluate_matchers(
            [model], [self.processing_class], corpus, self.eval_protocol, self.captions_per_image
        )
        scalars = {
            f"{metric_key_prefix}_{key}": float(value)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and key != "ensemble_size"
        }
        self.log(scalars)
        self._check_collapse(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, scalars)
        return scalars

    def _check_collapse(self, metrics: dict[str, Any]) -> None:
        """After the first epoch, validation rSum at or below chance is a collapse: warn, or stop."""
        epoch = self.state.epoch
        if self.collapse_guard == "off" or not self.is_in_train or epoch is None or epoch < 1:
            return
        images_per_fold = metrics["n_images"] // metrics.get("n_folds", 1)
        captions_per_image = metrics["n_captions"] // metrics["n_images"]
        chance = chance_metrics(images_per_fold, captions_per_image)
        if metrics["rsum"] > chance["rsum"]:
            return
        message = (
            f"validation retrieval at or below chance after epoch {epoch:.2f} (step {self.state.global_step}): "
            f"rSum {metrics['rsum']:.2f} vs chance {chance['rsum']:.2f} "
            f"(R@1 i2t {metrics['i2t_r1']:.2f}, t2i {metrics['t2i_r1']:.2f}; "
            f"{images_per_fold} images x {captions_per_image} captions per fold): the model has collapsed; "
            f"lower training.learning_rate or check the features"
        )
        if self.collapse_guard == "stop":
            raise TrainingCollapsedError(message)
        self.collapse_warnings.append(message)
        warnings.warn(message, CollapseWarning, stacklevel=2)

    def create_model_card(self, *args, **kwargs) -> None:
        """Model cards are rendered from evaluated results by `ccr push`; the Trainer's must not replace them."""


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters (and buffers) holding a NaN or an infinity."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _nonfinite_terms(outputs) -> dict[str, float]:
    """The loss terms of a model output whose value is non-finite ({} when only their sum overflowed)."""
    values = {
        label: float(getattr(outputs, name).detach())
        for name, label in LOSS_TERMS.items()
        if getattr(outputs, name, None) is not None
    }
    return {label: value for label, value in values.items() if not math.isfinite(value)} or values


def _likely_causes(model: torch.nn.Module, step_inputs: list[dict[str, Any]]) -> list[str]:
    """What a non-finite step most likely comes from: weights already non-finite, or features too large."""
    causes = []
    bad = nonfinite_parameters(model)
    if bad:
        causes.append(
            f"{len(bad)} weight tensor(s) are already non-finite ({', '.join(bad[:3])}): an earlier update "
            f"diverged, lower training.learning_rate"
        )
    features = [inputs["region_features"] for inputs in step_inputs if "region_features" in inputs]
    if features:
        magnitude = max(float(f.abs().nan_to_num(nan=math.inf).max()) for f in features)
        if not math.isfinite(magnitude) or magnitude > MAX_FEATURE_MAGNITUDE:
            causes.append(f"the batch's region features reach |x| = {magnitude:.3g}: are they real features?")
    return causes
