"""Read images and turn them into normalised pixel tensors for a timm backbone.

Images are read as viewers show them (`models/image_processing_matcher.decode_image`: EXIF orientation
first, 16-bit pixels scaled, a pixel limit against decompression bombs). The whole image is resized
(aspect ratio not kept) to the backbone's input size, never cropped: a feature-map cell then covers the
same fraction of the original image along each axis, which is what lets region boxes be given in the
original image's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError
from ..models.image_processing_matcher import ImageDecodeError, MatcherImageProcessor, decode_image


class ImageReadError(UserError, OSError):
    """An image file that cannot be decoded (missing, not an image, truncated); names the file."""


def read_image(path: str | Path) -> Image.Image:
    """Decode an image file fully (a truncated file fails here, not later) as the RGB image a viewer shows."""
    try:
        return decode_image(Path(path))
    except ImageDecodeError as err:
        raise ImageReadError(str(err)) from err


@dataclass
class RegionImageProcessor:
    """Resize to `image_size` (height, width) with `interpolation` and normalise with `mean` / `std`.

    `from_timm_config` takes all four from a timm model's `pretrained_cfg` (e.g. `efficientnet_lite0`:
    224x224, bicubic, ImageNet mean and std).
    """

    image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    @classmethod
    def from_timm_config(
        cls, pretrained_cfg: dict, image_size: int | tuple[int, int] | None = None
    ) -> RegionImageProcessor:
        """A processor with the backbone's normalisation; `image_size` overrides its input size."""
        if image_size is None:
            image_size = tuple(pretrained_cfg.get("input_size", (3, 224, 224))[1:])
        elif isinstance(image_size, int):
            image_size = (image_size, image_size)
        return cls(
            image_size=tuple(image_size),
            mean=tuple(pretrained_cfg.get("mean", cls.mean)),
            std=tuple(pretrained_cfg.get("std", cls.std)),
            interpolation=pretrained_cfg.get("interpolation", cls.interpolation),
        )

    def matcher_processor(self) -> MatcherImageProcessor:
        """The same resize and normalisation as the image processor a vision-tower checkpoint carries."""
        height, width = self.image_size
        return MatcherImageProcessor(
            size={"height": height, "width": width},
            image_mean=self.mean,
            image_std=self.std,
            resample=self.interpolation,
        )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """`(3, height, width)` float32 normalised pixels of one RGB image."""
        processor = self.matcher_processor()
        return processor.normalize_pixels(processor.resize(image.convert("RGB")))

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """`(batch, 3, height, width)` pixels of RGB images of any sizes."""
        return torch.stack([self.preprocess(image) for image in images])
