"""Region features with pixel boxes from a timm backbone's last feature map.

Regions are either a `grid x grid` tiling of the image (6 x 6 = 36 regions by default, like the 36
bottom-up-attention regions) or boxes given by the user. Both are pooled from the feature map with
RoIAlign (`models/region_pooling.py`, the code a matcher's vision tower uses), so a region's feature is the
average of the map over exactly its box. Boxes are `(x1, y1, x2, y2)` in the ORIGINAL image's pixels, the
unit the corpus schema and the attention metrics use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..errors import InvalidValueError, UserError
from ..models.region_pooling import grid_boxes, pool_boxes
from .processor import ImageReadError, RegionImageProcessor, read_image
from .weights import DEFAULT_BACKBONE, create_backbone


class BoxError(UserError, ValueError):
    """User-given boxes that are not `(x1, y1, x2, y2)` inside the image with x1 < x2, y1 < y2."""


@dataclass
class ImageRegions:
    """What the extractor gives for one image.

    features: `(n_regions, feature_dim)` float32; boxes: `(n_regions, 4)` float32 `(x1, y1, x2, y2)` in the
    original image's pixels, row for row; image_size: `(width, height)` of the original image.
    """

    features: np.ndarray
    boxes: np.ndarray
    image_size: tuple[int, int]


def check_boxes(boxes: np.ndarray | torch.Tensor, image_size: tuple[int, int], where: str) -> torch.Tensor:
    """`(n, 4)` float32 boxes, checked to lie inside the image with positive width and height."""
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
    width, height = image_size
    if boxes.ndim != 2 or boxes.shape[0] == 0 or boxes.shape[1] != 4:
        raise BoxError(
            f"{where}: expected a non-empty list of (x1, y1, x2, y2) boxes, found shape {tuple(boxes.shape)}"
        )
    bad = (
        (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
        | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    )  # fmt: skip
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise BoxError(
            f"{where}: box {i} {boxes[i].tolist()} is not inside the {width}x{height} image with x1 < x2, y1 < y2"
        )
    return boxes


class RegionFeatureExtractor:
    """Images -> `ImageRegions`, in batches on the backbone's device.

    backbone: a timm model name (`efficientnet_lite0` by default: 1280-d features); weights: a local state
    dict (timm or EfficientNet-PyTorch naming, see `weights.py`), or None for timm's pretrained weights;
    model: an already built timm model (then backbone and weights are not used). grid: regions per side
    when no boxes are given. image_size: the network's input size (default: the backbone's pretrained
    input size). device: default the GPU when there is one.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | Path | None = None,
        grid: int = 6,
        image_size: int | tuple[int, int] | None = None,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        model: nn.Module | None = None,
    ):
        if grid < 1 or batch_size < 1:
            raise InvalidValueError(f"grid and batch_size must be >= 1, got {grid} and {batch_size}")
        model = model if model is not None else create_backbone(backbone, weights)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(device)
        self.processor = RegionImageProcessor.from_timm_config(model.pretrained_cfg, image_size)
        self.grid = grid
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def feature_dim(self) -> int:
        return int(self.model.num_features)

    @torch.no_grad()
    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(batch, feature_dim, h, w)` last feature map of `(batch, 3, height, width)` pixels."""
        maps = self.model.forward_features(pixels.to(self.device))
        if maps.ndim != 4:
            raise UserError(
                f"backbone {self.model.default_cfg.get('architecture')!r} gives features of shape "
                f"{tuple(maps.shape)}, not a (batch, channels, h, w) map: choose a convolutional timm model"
            )
        return maps

    @torch.no_grad()
    def extract_images(
        self, images: Sequence[Image.Image], boxes: Sequence[torch.Tensor | None] | None = None
    ) -> list[ImageRegions]:
        """Regions of RGB images (one batch); `boxes[i]` `(n_i, 4)` original pixels, or None for the grid."""
        boxes = list(boxes) if boxes is not None else [None] * len(images)
        sizes = [image.size for image in images]
        pixel_boxes = [
            grid_boxes(w, h, self.grid) if b is None else torch.as_tensor(b, dtype=torch.float32)
            for (w, h), b in zip(sizes, boxes, strict=True)
        ]
        maps = self.feature_map(self.processor(images))
        height, width = self.processor.image_size
        # The image was resized as a whole (no crop): original pixel x is x * width / w in the network input.
        scales = [torch.tensor([width / w, height / h] * 2) for w, h in sizes]
        input_boxes = [b * s for b, s in zip(pixel_boxes, scales, strict=True)]
        features = pool_boxes(maps, input_boxes, (height, width)).float().cpu().numpy()
        counts = np.cumsum([len(b) for b in pixel_boxes])[:-1]
        return [
            ImageRegions(f, b.numpy(), size)
            for f, b, size in zip(np.split(features, counts), pixel_boxes, sizes, strict=True)
        ]

    def extract(
        self,
        paths: Sequence[str | Path],
        boxes: dict[str, np.ndarray] | None = None,
        skip_bad: bool = False,
        progress: bool = True,
    ) -> Iterator[tuple[Path, ImageRegions | ImageReadError]]:
        """Yield `(path, regions)` per image file, in order. `boxes` maps a path as given, or a file name,
        to its boxes `(n, 4)` in the image's pixels (others get the grid). An unreadable file raises
        `ImageReadError`, or with `skip_bad` is yielded as `(path, error)` so the caller can report it."""
        paths = [Path(p) for p in paths]
        bar = tqdm(total=len(paths), desc="extract regions", unit="image", disable=not progress)
        try:
            for start in range(0, len(paths), self.batch_size):
                batch, images, batch_boxes = [], [], []
                for path in paths[start : start + self.batch_size]:
                    try:
                        image = read_image(path)
                    except ImageReadError as err:
                        if not skip_bad:
                            raise
                        yield path, err
                        continue
                    given = None if boxes is None else boxes.get(str(path), boxes.get(path.name))
                    batch.append(path)
                    images.append(image)
                    batch_boxes.append(
                        None if given is None else check_boxes(given, image.size, f"boxes of {path.name}")
                    )
                if images:
                    yield from zip(batch, self.extract_images(images, batch_boxes), strict=True)
                bar.update(len(paths[start : start + self.batch_size]))
        finally:
            bar.close()  # ends the bar's line before an error message is printed
