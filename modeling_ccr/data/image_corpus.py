"""Image corpora: (image, caption) pairs for training, image rows for evaluation, encoded by a vision tower.

An image corpus (`schema.image_corpus_features`) has the region-feature corpus's columns with `image` (the
encoded file) in place of `features`. Rows are read lazily from the Arrow table (the encoded bytes, not
decoded pixels), so a DataLoader worker decodes, resizes and normalises them in `ImageCaptionCollator`
(`collator.py`), in parallel with the model.

`tower_feature_split` runs a model's vision tower over every image of a split once, without gradients,
in batches on the model's device, and returns the split as a region-feature corpus: the tower's region
features, with the region boxes in each original image's pixels (what the attention metrics compare with
the gold boxes). The model scores its own tower features exactly as it scores the pixels
(`get_image_features`), so today's gallery scoring, retrieval and attention metrics run on it unchanged.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

from ..models.image_processing_matcher import MatcherImageProcessor, image_processor_for
from .schema import IMAGE_COLUMN, is_image_corpus


def _column(dataset: datasets.Dataset, name: str):
    return dataset.with_format("arrow", columns=[name])[:].column(name)


class ImageRows(torch.utils.data.Dataset):
    """The images of an image corpus split: `rows[i]` is {image: encoded bytes (or a path), image_size:
    (width, height), boxes: `(n, 4)` float32 or None, image_index: i, image_id}."""

    def __init__(self, dataset: datasets.Dataset) -> None:
        if not is_image_corpus(dataset):
            raise ValueError(
                f"not an image corpus: expected an {IMAGE_COLUMN!r} column, found {dataset.column_names}"
            )
        self.dataset = dataset
        self.image_ids = [str(i) for i in _column(dataset, "image_id").to_pylist()]
        self.image_sizes = np.asarray(_column(dataset, "image_size").to_pylist(), dtype=np.int64).reshape(
            -1, 2
        )
        self.has_boxes = "boxes" in dataset.column_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]  # Normalises negative indices, raises IndexError out of range.
        columns = [IMAGE_COLUMN, "boxes"] if self.has_boxes else [IMAGE_COLUMN]
        row = self.dataset.with_format("arrow", columns=columns)[index]
        image = row.column(IMAGE_COLUMN)[0].as_py()
        boxes = None
        if self.has_boxes:
            boxes = np.asarray(row.column("boxes")[0].as_py(), dtype=np.float32).reshape(-1, 4)
        return {
            "image": image["bytes"] if image.get("bytes") is not None else image["path"],
            "image_size": tuple(int(v) for v in self.image_sizes[index]),
            "boxes": boxes,
            "image_index": index,
            "image_id": self.image_ids[index],
        }


class ImagePairs(torch.utils.data.Dataset):
    """Every (image, caption) pair of an image corpus split: `pairs[i]` is an `ImageRows` item plus
    caption (str) and caption_index (its position in the row's captions). `len(pairs)` = captions."""

    def __init__(self, dataset: datasets.Dataset) -> None:
        self.images = ImageRows(dataset)
        self.dataset = dataset
        column = _column(dataset, "captions")
        counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        self.captions = pc.list_flatten(column).to_pylist()
        self.caption_to_image = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        first_of_image = np.searchsorted(self.caption_to_image, self.caption_to_image, side="left")
        self.caption_in_image = np.arange(len(self.captions), dtype=np.int64) - first_of_image

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]
        image_index = int(self.caption_to_image[index])
        return {
            **self.images[image_index],
            "caption": self.captions[index],
            "caption_index": int(self.caption_in_image[index]),
        }


def model_image_processor(model) -> MatcherImageProcessor:
    """The image processor of a model with a vision tower (the one saved with its checkpoint)."""
    tower = getattr(model, "vision_tower", None)
    if tower is None:
        raise ValueError(
            f"{type(model).__name__} reads region features: it has no vision tower to encode images"
        )
    return image_processor_for(tower)


@torch.no_grad()
def tower_feature_split(
    model, dataset: datasets.Dataset, batch_size: int = 32, num_workers: int = 0
) -> datasets.Dataset:
    """An image corpus split as the region-feature corpus the model's vision tower sees (each image once).

    `features` `(n_regions, feature_dim)` float32 from the tower, `boxes` `(n_regions, 4)` in the original
    image's pixels, and every other column (image_id, image_size, captions, phrases, caption_ids) as
    stored. A feature corpus is returned unchanged. The model runs in eval mode; its mode is restored.
    """
    if not is_image_corpus(dataset):
        return dataset
    from .collator import ImageCaptionCollator
    from .schema import corpus_features

    processor = model_image_processor(model)
    loader = torch.utils.data.DataLoader(
        ImageRows(dataset),
        batch_size=batch_size,
        collate_fn=ImageCaptionCollator.for_model(model, None),
        num_workers=num_workers,
    )
    features, boxes = [], []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            inputs = {
                k: batch[k].to(model.device)
                for k in ("pixel_values", "region_boxes", "region_mask")
                if k in batch
            }
            found, mask, region_boxes = model.tower_features(**inputs)
            original = processor.to_original_boxes(region_boxes, batch["image_sizes"].to(region_boxes.device))
            for f, b, m in zip(found, original, mask, strict=True):
                features.append(f[m].float().cpu().numpy())
                boxes.append(b[m].cpu().numpy())
    finally:
        model.train(was_training)
    kept = [c for c in dataset.column_names if c not in (IMAGE_COLUMN, "boxes")]
    columns = dataset.select_columns(kept).to_dict()
    schema = corpus_features(
        int(model.config.feature_dim),
        with_phrases="phrases" in kept,
        with_caption_ids="caption_ids" in kept,
    )
    return datasets.Dataset.from_dict({**columns, "features": features, "boxes": boxes}, features=schema)


# -- what a run needs from a split of either kind (features or images) --------------------------------------


def corpus_captions(dataset: datasets.Dataset) -> list[str]:
    """Every caption of a split in row order, for a feature or an image corpus (builds the vocabulary)."""
    if is_image_corpus(dataset):
        return ImagePairs(dataset).captions
    from .pairs import caption_table

    return caption_table(dataset)[0]


def split_feature_dim(dataset: datasets.Dataset, model_options: dict[str, Any]) -> int:
    """The region feature size a model trained on this split sees: the stored features' size, or for an
    image corpus the size of the section's `vision_tower` (which it then needs)."""
    if not is_image_corpus(dataset):
        return int(dataset.with_format("numpy", columns=["features"])[0]["features"].shape[-1])
    tower = model_options.get("vision_tower")
    if tower is None:
        raise ValueError(
            "the dataset holds images (an 'image' column), not region features: the model section needs a "
            "vision_tower (e.g. vision_tower: {architecture: efficientnet_lite0}), or extract features first "
            "with ccr extract"
        )
    from ..models.vision_tower import tower_feature_dim

    return tower_feature_dim(tower)


def training_pairs(dataset: datasets.Dataset) -> torch.utils.data.Dataset:
    """The (image, caption) pairs of a training split: `ImagePairs` for images, `ImageCaptionPairs` for features."""
    if is_image_corpus(dataset):
        return ImagePairs(dataset)
    from .pairs import ImageCaptionPairs

    return ImageCaptionPairs(dataset)


def training_collator(
    dataset: datasets.Dataset, model, tokenizer, max_words: int | None = None, augmentation=None
):
    """The collator of a training split: `ImageCaptionCollator.for_model` for images (decoding in the
    DataLoader workers), `RegionCaptionCollator` for features."""
    from .collator import ImageCaptionCollator, RegionCaptionCollator

    if is_image_corpus(dataset):
        return ImageCaptionCollator.for_model(model, tokenizer, max_words, augmentation)
    return RegionCaptionCollator(tokenizer, max_words)
