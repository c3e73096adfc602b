"""Boxes follow every resize, crop and flip exactly: boxes are drawn into the pixels and found again."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_ccr.data.collator import ImageCaptionCollator
from modeling_ccr.data.image_transforms import BoxAwareAugmentation, crop, flip_horizontally
from modeling_ccr.models.image_processing_matcher import MatcherImageProcessor

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
# Integer pixel-edge boxes (x1, y1, x2, y2) in a 120 x 80 picture: pixels x1 .. x2 - 1 are painted.
BOXES = np.array([[10, 6, 50, 30], [60, 40, 112, 76], [0, 50, 24, 80]], dtype=np.float32)


def drawn(width: int = 120, height: int = 80) -> Image.Image:
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    for (x1, y1, x2, y2), colour in zip(BOXES.astype(int), COLOURS, strict=True):
        pixels[y1:y2, x1:x2] = colour
    return Image.fromarray(pixels)


def found_box(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray | None:
    """The pixel-edge box of the pixels closer to `colour` than to the grey background (None if none)."""
    distance = np.abs(pixels.astype(np.float32) - np.array(colour, np.float32)).sum(axis=-1)
    rows, cols = np.nonzero(distance < 200)  # halfway between the colour and the grey (3 x 127 / 2)
    if len(rows) == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)


def assert_boxes_drawn(image: Image.Image, boxes: np.ndarray, kept: np.ndarray, tolerance: float) -> None:
    pixels = np.asarray(image)
    for box, colour, keep in zip(boxes, COLOURS, kept, strict=True):
        seen = found_box(pixels, colour)
        if not keep:
            continue
        assert seen is not None, colour
        np.testing.assert_allclose(seen, box, atol=tolerance)


def test_a_horizontal_flip_moves_each_box_to_its_mirrored_pixels():
    image, boxes = flip_horizontally(drawn(), BOXES)
    assert_boxes_drawn(image, boxes, np.ones(3, bool), tolerance=0)


def test_a_crop_shifts_and_clips_the_boxes_and_drops_those_it_cuts_away():
    image, boxes, kept = crop(drawn(), BOXES, (20, 10, 100, 70))
    assert kept.tolist() == [True, True, True]
    assert_boxes_drawn(image, boxes, kept, tolerance=0)
    np.testing.assert_array_equal(boxes[1], [40, 30, 80, 60])  # clipped at the window's right and bottom
    _, _, kept = crop(drawn(), BOXES, (60, 30, 120, 80))
    assert kept.tolist() == [False, True, False]  # box 1 lies right of x = 60; boxes 0 and 2 do not


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(64, 64), (97, 41)])
def test_the_whole_image_resize_scales_the_boxes_with_the_pixels(resample, size):
    processor = MatcherImageProcessor(size={"height": size[1], "width": size[0]}, resample=resample)
    image = drawn()
    batch = processor(image, region_boxes=[BOXES])
    resized = processor.resize(image)
    # Interpolation blurs an edge by up to one pixel of the smaller image.
    assert_boxes_drawn(resized, batch["region_boxes"][0].numpy(), np.ones(3, bool), tolerance=1.0)
    back = processor.to_original_boxes(batch["region_boxes"], batch["image_sizes"])[0]
    torch.testing.assert_close(back, torch.from_numpy(BOXES), atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_random_crops_and_flips_then_resize_keep_every_box_on_its_pixels(seed):
    augmentation = BoxAwareAugmentation(crop_scale=(0.4, 0.9), flip_probability=0.5)
    image, boxes, kept = augmentation(drawn(), BOXES, np.random.default_rng(seed))
    assert_boxes_drawn(image, boxes, kept, tolerance=0)
    assert kept.any()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_collator_gives_boxes_on_the_pixels_of_the_normalised_batch():
    processor = MatcherImageProcessor(size={"height": 48, "width": 72}, resample="nearest")
    collate = ImageCaptionCollator(
        None, processor, use_boxes=True, augmentation=BoxAwareAugmentation((0.5, 0.8), 0.5)
    )
    items = [{"image": png_bytes(drawn()), "boxes": BOXES, "image_index": i} for i in range(4)]
    torch.manual_seed(3)
    batch = collate(items)
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    assert batch["pixel_values"].shape == (4, 3, 48, 72)
    for pixels, boxes, mask in zip(
        batch["pixel_values"], batch["region_boxes"], batch["region_mask"], strict=True
    ):
        shown = ((pixels * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        assert_boxes_drawn(Image.fromarray(shown), boxes.numpy(), mask.numpy(), tolerance=1.0)
    assert batch["image_sizes"].tolist() == [[120, 80]] * 4
