"""Read images and turn them into normalised pixel tensors for a timm backbone.

The whole image is resized (aspect ratio not kept) to the backbone's input size, never cropped: a
feature-map cell then covers the same fraction of the original image along each axis, which is what
lets region boxes be given in the original image's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError


class ImageReadError(UserError, OSError):
    """An image file that cannot be decoded (missing, not an image, truncated); names the file."""


def read_image(path: str | Path) -> Image.Image:
    """Decode an image file fully (a truncated file fails here, not later) as RGB."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()  # decodes every byte: PIL raises on a truncated file only when it reads the data
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: image file not found") from err
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{path}: not an image file PIL can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot decode the image ({err})") from err


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

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """`(3, height, width)` float32 normalised pixels of one RGB image."""
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
        height, width = self.image_size
        resized = image.convert("RGB").resize((width, height), resample[self.interpolation])
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """`(batch, 3, height, width)` pixels of RGB images of any sizes."""
        return torch.stack([self.preprocess(image) for image in images])
