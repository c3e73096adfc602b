"""Images as viewers show them, and the image processor a matcher with a vision tower is saved with.

`decode_image` reads a file, bytes or PIL image as RGB the way an image viewer shows it: EXIF orientation
applied first (so sizes and boxes are in the displayed orientation), 16-bit and float modes scaled to 8 bits
(not clipped to white), and a pixel limit against decompression bombs, each failure one line naming the
image.

`MatcherImageProcessor` resizes the whole image (no crop, aspect ratio not kept) to the tower's input size
and normalises it; boxes given in the original image's pixels are scaled with it, and
`to_original_boxes` maps the tower's region boxes back. Its size, mean, std and resampling come from the
tower's timm data config (`VisionTower.data_config`). Checkpoint code: numpy, PIL, torch, transformers.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

# 8 x 10^7 pixels (a 10000 x 8000 photo): far above any matcher's input, far below what exhausts memory.
MAX_IMAGE_PIXELS = 80_000_000
RESAMPLING = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


class ImageDecodeError(ValueError):
    """An image that cannot be read as RGB (missing, not an image, truncated, too many pixels); names it."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL mode; 16-bit ("I;16*", "I") and float ("F") pixels scaled to 0..255, not clipped."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data (PNG) spans 0..65535; a 32-bit integer image is scaled by its own maximum beyond that.
        top = max(65535.0, float(values.max()) if values.size else 0.0)
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and float(np.nanmax(values)) <= 1.0 else 1.0
        image = Image.fromarray(
            np.clip(np.nan_to_num(values) * scale + 0.5, 0, 255).astype(np.uint8), mode="L"
        )
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels shown on white, as viewers and browsers do, not as whatever colour they hold.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def decode_image(source: str | Path | bytes | Image.Image, name: str | None = None) -> Image.Image:
    """The RGB image a viewer shows for a file path, encoded bytes or a PIL image (EXIF orientation applied).

    Raises `ImageDecodeError` naming `name` (default: the path) for a missing, undecodable or truncated
    file, or one over `MAX_IMAGE_PIXELS` pixels.
    """
    name = name or (str(source) if isinstance(source, (str, Path)) else "image")
    try:
        if isinstance(source, Image.Image):
            opened = source
        else:
            opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(
                    f"{name}: {width}x{height} = {width * height} pixels, over the limit of {MAX_IMAGE_PIXELS} "
                    "(a decompression bomb, or a picture far larger than any matcher uses)"
                )
            opened.load()  # decodes every byte: PIL raises on a truncated file only when it reads the data
            return _to_rgb(ImageOps.exif_transpose(opened))
    except ImageDecodeError:
        raise
    except FileNotFoundError as err:
        raise ImageDecodeError(f"{name}: image file not found") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(f"{name}: not an image file PIL can read") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(
            f"{name}: over PIL's pixel limit, refused as a decompression bomb ({err})"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(
            f"{name}: cannot decode the image ({str(err).splitlines()[0] if str(err) else err})"
        ) from err


def scale_boxes(boxes: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """`(n, 4)` float32 `(x1, y1, x2, y2)` boxes of a `from_size` (width, height) image, in the pixels of
    the same image resized to `to_size` (width, height)."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    ).astype(np.float32)


class MatcherImageProcessor(BaseImageProcessor):
    """Whole-image resize to `size` {height, width} with `resample`, then `(pixel / 255 - mean) / std`.

    `__call__(images, region_boxes=None)` returns a `BatchFeature` with `pixel_values` `(batch, 3, height,
    width)` float32 and `image_sizes` `(batch, 2)` (width, height) of the originals; with region_boxes
    (one `(n_i, 4)` array per image, original pixels) also `region_boxes` `(batch, max_n, 4)` in the
    resized frame and `region_mask` `(batch, max_n)` bool.
    """

    model_input_names = ["pixel_values"]  # noqa: RUF012 (transformers reads it as a class attribute)

    def __init__(
        self,
        size: dict[str, int] | None = None,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        resample: str = "bicubic",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.size = dict(size or {"height": 224, "width": 224})
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        if resample not in RESAMPLING:
            raise ValueError(f"resample must be one of {sorted(RESAMPLING)}, found {resample!r}")
        self.resample = resample

    @property
    def input_size(self) -> tuple[int, int]:
        """`(width, height)` of the network input."""
        return int(self.size["width"]), int(self.size["height"])

    def resize(self, image: Image.Image) -> Image.Image:
        """The whole RGB image at the input size (no crop)."""
        return image.resize(self.input_size, RESAMPLING[self.resample])

    def normalize_pixels(self, image: Image.Image) -> torch.Tensor:
        """`(3, height, width)` float32 normalised pixels of an RGB image already at the input size."""
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (pixels - mean) / std

    def preprocess(
        self,
        images: Image.Image | str | Path | Sequence[Image.Image | str | Path],
        region_boxes: Sequence[np.ndarray] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        if isinstance(images, (Image.Image, str, Path)):
            images = [images]
        decoded = [decode_image(image) for image in images]
        pixel_values = torch.stack([self.normalize_pixels(self.resize(image)) for image in decoded])
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor([image.size for image in decoded], dtype=torch.long),
        }
        if region_boxes is not None:
            scaled = [
                scale_boxes(b, image.size, self.input_size)
                for b, image in zip(region_boxes, decoded, strict=True)
            ]
            data["region_boxes"], data["region_mask"] = pad_boxes(scaled)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def to_original_boxes(self, boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """Region boxes `(batch, n, 4)` in the input frame -> the original images' pixels (`image_sizes`
        `(batch, 2)` width, height): the inverse of the whole-image resize."""
        width, height = self.input_size
        sizes = image_sizes.to(boxes.device, torch.float32)
        scale = torch.stack([sizes[:, 0] / width, sizes[:, 1] / height] * 2, dim=-1)
        return boxes.float() * scale[:, None, :]


def pad_boxes(boxes: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged `(n_i, 4)` boxes -> `(batch, max_n, 4)` float32 zero-padded and mask `(batch, max_n)` bool."""
    longest = max((len(b) for b in boxes), default=0)
    padded = torch.zeros(len(boxes), longest, 4)
    mask = torch.zeros(len(boxes), longest, dtype=torch.bool)
    for i, b in enumerate(boxes):
        padded[i, : len(b)] = torch.as_tensor(np.asarray(b, dtype=np.float32).reshape(-1, 4))
        mask[i, : len(b)] = True
    return padded, mask


def image_processor_for(tower) -> MatcherImageProcessor:
    """The processor of a `VisionTower` (its timm data config and input size)."""
    return MatcherImageProcessor(**tower.data_config())
