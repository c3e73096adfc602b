"""Batching of (region features, caption) pairs into padded tensors.

`pad_regions` and `tokenize_captions` are the two halves of `RegionCaptionCollator`; evaluation code
that encodes images and captions separately uses them directly, so both paths pad identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

# Number of special tokens around a caption's words (<start> ... <end>).
_N_SPECIAL_TOKENS = 2


def _where(position: int, image_indices: Sequence[int] | None) -> str:
    """Name an item in an error message by its image row when known, else by its batch position."""
    if image_indices is not None:
        return f"image_index {int(image_indices[position])} (batch position {position})"
    return f"batch position {position}"


def pad_regions(
    features: Sequence[np.ndarray | torch.Tensor], image_indices: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged region features, zero-padding the region axis.

    Args:
        features: one `(n_regions_i, feature_dim)` array per image; the same feature_dim for all.
        image_indices: optional image rows, only used to name the offending image in errors.

    Returns:
        region_features: `(batch, max_regions, feature_dim)` float32, zero beyond each image's regions.
        region_mask: `(batch, max_regions)` bool, True for real regions.
    """
    if len(features) == 0:
        raise ValueError("pad_regions needs at least one image, got an empty list")
    # Collation runs on CPU (DataLoader workers); tensors from elsewhere are copied there.
    arrays = [torch.as_tensor(f).to(device="cpu", dtype=torch.float32) for f in features]
    feature_dim = arrays[0].shape[-1] if arrays[0].ndim == 2 else None
    for i, array in enumerate(arrays):
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(
                f"features of {_where(i, image_indices)} must be (n_regions >= 1, feature_dim), "
                f"found shape {tuple(array.shape)}"
            )
        if array.shape[1] != feature_dim:
            raise ValueError(
                f"feature_dim differs within the batch: {_where(0, image_indices)} has {feature_dim}, "
                f"{_where(i, image_indices)} has {array.shape[1]}"
            )
        if not torch.isfinite(array).all():
            raise ValueError(f"features of {_where(i, image_indices)} contain NaN or Inf")
    max_regions = max(a.shape[0] for a in arrays)
    region_features = torch.zeros(len(arrays), max_regions, feature_dim, dtype=torch.float32)
    region_mask = torch.zeros(len(arrays), max_regions, dtype=torch.bool)
    for i, array in enumerate(arrays):
        region_features[i, : array.shape[0]] = array
        region_mask[i, : array.shape[0]] = True
    return region_features, region_mask


def tokenize_captions(
    tokenizer: PreTrainedTokenizerBase,
    captions: Sequence[str],
    max_words: int | None = None,
    image_indices: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode captions as `<start> words <end>`, right-padded with the tokenizer's pad id.

    Args:
        captions: `batch` non-empty strings.
        max_words: keep at most this many words per caption (`<end>` is always kept); None keeps all.
        image_indices: optional image rows, only used to name the offending caption in errors.

    Returns:
        input_ids: `(batch, max_tokens)` long.
        attention_mask: `(batch, max_tokens)` long, 1 for real tokens (including `<start>`/`<end>`).
    """
    if len(captions) == 0:
        raise ValueError("tokenize_captions needs at least one caption, got an empty list")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"caption of {_where(i, image_indices)} is empty or not a string: {caption!r}")
    if max_words is not None and max_words < 1:
        raise ValueError(f"max_words must be >= 1 or None, got {max_words}")
    encoded = tokenizer(
        list(captions),
        padding="longest",
        # The backend truncates the words before adding <start>/<end>, so <end> survives truncation.
        truncation=max_words is not None,
        max_length=None if max_words is None else max_words + _N_SPECIAL_TOKENS,
        return_attention_mask=True,
        return_token_type_ids=False,
        return_tensors="pt",
    )
    return encoded["input_ids"].long(), encoded["attention_mask"].long()


@dataclass
class RegionCaptionCollator:
    """Collate `ImageCaptionPairs` items into model inputs.

    Each item is a dict with `features` `(n_regions, feature_dim)`, `caption` str and `image_index`
    int. Returns a dict of tensors:
        region_features: `(batch, max_regions, feature_dim)` float32, zero-padded;
        region_mask: `(batch, max_regions)` bool, True for real regions;
        input_ids: `(batch, max_tokens)` long, padded with the tokenizer's pad id;
        attention_mask: `(batch, max_tokens)` long;
        image_index: `(batch,)` long, the dataset row of each item's image (equal rows mean the same
            image, so a loss can tell a duplicate positive from a true in-batch negative).
    """

    tokenizer: PreTrainedTokenizerBase
    max_words: int | None = None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if len(items) == 0:
            raise ValueError("RegionCaptionCollator got an empty batch")
        for i, item in enumerate(items):
            missing = [k for k in ("features", "caption", "image_index") if k not in item]
            if missing:
                raise ValueError(f"batch item {i} is missing key(s) {missing}; found {sorted(item)}")
        image_indices = [int(item["image_index"]) for item in items]
        region_features, region_mask = pad_regions([item["features"] for item in items], image_indices)
        input_ids, attention_mask = tokenize_captions(
            self.tokenizer, [item["caption"] for item in items], self.max_words, image_indices
        )
        return {
            "region_features": region_features,
            "region_mask": region_mask,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "image_index": torch.tensor(image_indices, dtype=torch.long),
        }


@dataclass
class ImageCaptionCollator:
    """Collate image-corpus items (`data/image_corpus.py`) into a vision-tower model's inputs, in the
    DataLoader workers: decode (as a viewer shows the image), augment (optional, boxes moved with the
    pixels), resize as a whole and normalise with the model's image processor.

    Each item has `image` (encoded bytes or a path), `image_index`, optional `boxes` `(n, 4)` in the
    original image's pixels and, unless `tokenizer` is None, `caption`. Returns:
        pixel_values: `(batch, 3, height, width)` float32;
        image_sizes: `(batch, 2)` long (width, height) of the decoded originals;
        region_boxes / region_mask: `(batch, max_n, 4)` boxes in pixel_values' frame and `(batch, max_n)`
            bool (only with `use_boxes`: a tower with "boxes" regions); a box an augmentation cropped away
            is masked out;
        input_ids / attention_mask: `(batch, max_tokens)` long (with a tokenizer);
        image_index: `(batch,)` long.
    """

    tokenizer: PreTrainedTokenizerBase | None
    image_processor: Any
    max_words: int | None = None
    use_boxes: bool = False
    augmentation: Any = None

    @classmethod
    def for_model(cls, model, tokenizer, max_words=None, augmentation=None) -> ImageCaptionCollator:
        """The collator of a model with a vision tower: its image processor, boxes when it pools boxes."""
        from ..models.image_processing_matcher import image_processor_for

        tower = getattr(model, "vision_tower", None)
        if tower is None:
            raise ValueError(f"{type(model).__name__} has no vision tower: use RegionCaptionCollator")
        uses_boxes = tower.spec["regions"] == "boxes"
        return cls(tokenizer, image_processor_for(tower), max_words, uses_boxes, augmentation)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from ..models.image_processing_matcher import decode_image, pad_boxes, scale_boxes

        if len(items) == 0:
            raise ValueError("ImageCaptionCollator got an empty batch")
        image_indices = [int(item["image_index"]) for item in items]
        rng = np.random.default_rng(int(torch.randint(2**62, ()).item()))  # the worker's seeded torch RNG
        pixels, sizes, boxes, kept = [], [], [], []
        for position, item in enumerate(items):
            where = f"{_where(position, image_indices)}{' (image_id ' + repr(item['image_id']) + ')' if 'image_id' in item else ''}"
            image = decode_image(item["image"], name=where)
            sizes.append(image.size)
            item_boxes = item.get("boxes") if self.use_boxes else None
            if self.use_boxes and (item_boxes is None or len(item_boxes) == 0):
                raise ValueError(f"{where}: this model pools given boxes, but the row has none")
            item_boxes = (
                np.zeros((0, 4), np.float32) if item_boxes is None else np.asarray(item_boxes, np.float32)
            )
            item_kept = np.ones(len(item_boxes), dtype=bool)
            if self.augmentation is not None:
                image, item_boxes, item_kept = self.augmentation(image, item_boxes, rng)
            pixels.append(self.image_processor.normalize_pixels(self.image_processor.resize(image)))
            boxes.append(scale_boxes(item_boxes, image.size, self.image_processor.input_size))
            kept.append(item_kept)
        batch = {
            "pixel_values": torch.stack(pixels),
            "image_sizes": torch.tensor(sizes, dtype=torch.long),
            "image_index": torch.tensor(image_indices, dtype=torch.long),
        }
        if self.use_boxes:
            batch["region_boxes"], padding = pad_boxes(boxes)
            mask = torch.zeros_like(padding)
            for i, item_kept in enumerate(kept):
                mask[i, : len(item_kept)] = torch.from_numpy(item_kept)
            batch["region_mask"] = mask
        if self.tokenizer is not None:
            batch["input_ids"], batch["attention_mask"] = tokenize_captions(
                self.tokenizer, [item["caption"] for item in items], self.max_words, image_indices
            )
        return batch
