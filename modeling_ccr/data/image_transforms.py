"""Geometric training augmentations for image corpora that move the region boxes with the pixels.

Each transform takes an RGB PIL image and its `(n, 4)` float32 boxes `(x1, y1, x2, y2)` in that image's
pixels (pixel i spans [i, i + 1)) and returns the new image, the boxes in the new image's pixels, and a
`(n,)` bool of the boxes still inside it. The model's processor then resizes the result as a whole
(`MatcherImageProcessor`), scaling the boxes with it. Augmentations are optional and off by default; a
horizontal flip swaps left and right, which captions that say "left" or "right" do not follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# A box clipped to less than this many pixels on a side no longer shows its object: its region is dropped.
MIN_BOX_SIDE = 1.0


def flip_horizontally(image: Image.Image, boxes: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Mirror left-right: x becomes `width - x`, so a box `(x1, x2)` becomes `(width - x2, width - x1)`."""
    width = image.size[0]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flipped


def crop(
    image: Image.Image, boxes: np.ndarray, window: tuple[int, int, int, int]
) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Cut `window` `(left, top, right, bottom)` (integer pixels) out of the image; boxes are shifted into it
    and clipped to it, and a box left with a side under `MIN_BOX_SIDE` is marked as dropped."""
    left, top, right, bottom = window
    shifted = boxes - np.array([left, top, left, top], dtype=np.float32)
    clipped = np.clip(shifted, 0, [right - left, bottom - top, right - left, bottom - top]).astype(np.float32)
    kept = ((clipped[:, 2] - clipped[:, 0]) >= MIN_BOX_SIDE) & (
        (clipped[:, 3] - clipped[:, 1]) >= MIN_BOX_SIDE
    )
    return image.crop(window), clipped, kept


@dataclass
class BoxAwareAugmentation:
    """Random crop (a share of the image's area, same aspect ratio) and horizontal flip, boxes moved along.

    crop_scale: `(low, high)` area share of the crop window, drawn uniformly; `(1, 1)` = no crop.
    flip_probability: chance of a horizontal flip.
    A crop that would drop every box is not made (the image keeps all of its regions instead).
    """

    crop_scale: tuple[float, float] = (1.0, 1.0)
    flip_probability: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(
                f"crop_scale must be (low, high) with 0 < low <= high <= 1, found {self.crop_scale}"
            )
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"flip_probability must be in [0, 1], found {self.flip_probability}")

    def __call__(
        self, image: Image.Image, boxes: np.ndarray, rng: np.random.Generator
    ) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        kept = np.ones(len(boxes), dtype=bool)
        low, high = self.crop_scale
        if high < 1 or low < 1:
            width, height = image.size
            side = float(np.sqrt(rng.uniform(low, high)))
            crop_width, crop_height = max(1, round(width * side)), max(1, round(height * side))
            left = int(rng.integers(0, width - crop_width + 1))
            top = int(rng.integers(0, height - crop_height + 1))
            cropped, moved, inside = crop(image, boxes, (left, top, left + crop_width, top + crop_height))
            if inside.any() or len(boxes) == 0:
                image, boxes, kept = cropped, moved, inside
        if rng.random() < self.flip_probability:
            image, boxes = flip_horizontally(image, boxes)
        return image, boxes, kept
