"""Guards for the private transformers.Trainer members that `MatchingTrainer` still overrides or calls.

transformers gives no public hook for these (see the comments at each use in
`modeling_ccr/training/trainer.py`), so a release that removes, renames or re-signs one would otherwise
break resume, complete-checkpoint markers, best-model loading or the gradient guard silently: an
override the Trainer no longer calls is simply never run. Each test fails naming the member.
"""

from __future__ import annotations

import inspect

import pytest
from transformers import Trainer

from modeling_ccr.training.trainer import MatchingTrainer


def _member(name: str):
    member = getattr(Trainer, name, None)
    if member is None or not callable(member):
        pytest.fail(f"transformers.Trainer.{name} no longer exists: MatchingTrainer relies on it")
    return member


def _check_parameters(name: str, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """`Trainer.<name>` still takes `names` (in this order, after self); any other parameter has a default."""
    parameters = list(inspect.signature(_member(name)).parameters.values())[1:]  # drop self
    found = tuple(p.name for p in parameters[: len(names)])
    if found != names:
        pytest.fail(f"transformers.Trainer.{name} now takes {found}, MatchingTrainer expects {names}")
    for parameter in parameters[len(names) :]:
        if parameter.name in optional:
            continue
        if parameter.default is inspect.Parameter.empty and parameter.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            pytest.fail(
                f"transformers.Trainer.{name} has a new required parameter {parameter.name!r} that "
                f"MatchingTrainer does not pass"
            )


def _called_by_trainer(name: str) -> None:
    """An override is only useful while the Trainer's own code still calls the member."""
    source = inspect.getsource(Trainer)
    if f"self.{name}(" not in source:
        pytest.fail(f"transformers.Trainer no longer calls self.{name}(): MatchingTrainer's override is dead")


def test_get_grad_norm():
    # Overridden: (model, grad_norm=None) -> grad norm; the Trainer calls it with grad_norm= as keyword.
    _check_parameters("_get_grad_norm", ("model", "grad_norm"))
    _called_by_trainer("_get_grad_norm")
    assert "grad_norm" in inspect.signature(MatchingTrainer._get_grad_norm).parameters


def test_save_checkpoint():
    # Overridden: (model, trial); the marker and our rotation run after the Trainer's checkpoint.
    _check_parameters("_save_checkpoint", ("model", "trial"))
    _called_by_trainer("_save_checkpoint")


def test_load_from_checkpoint():
    # Called as self._load_from_checkpoint(checkpoint_path): one positional argument, the rest defaulted.
    _check_parameters("_load_from_checkpoint", ("resume_from_checkpoint",))


def test_load_best_model():
    # Called as self._load_best_model() with no arguments (it reads state.best_model_checkpoint).
    _check_parameters("_load_best_model", ())
