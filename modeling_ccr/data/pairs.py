"""(image, caption) pairs over a dataset with one row per image.

The dataset keeps one row per image (`image_id`, `features` Array2D `(n_regions, feature_dim)`,
optional `boxes`, `captions` list[str]); training iterates over captions. `ImageCaptionPairs` indexes
every (row, caption) pair once at construction from the caption counts and reads the image's features
lazily, so features are never duplicated per caption.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

REQUIRED_COLUMNS = ("features", "captions")


def _check_columns(dataset: datasets.Dataset) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset is missing column(s) {missing}; expected one row per image with columns "
            f"{list(REQUIRED_COLUMNS)}, found {dataset.column_names}"
        )


def caption_table(dataset: datasets.Dataset) -> tuple[list[str], np.ndarray]:
    """All captions in image-row order, and the row of the image each one describes.

    Returns:
        captions: list[str] of length n_captions, row 0's captions first.
        caption_to_image: `(n_captions,)` int64, the dataset row of each caption's image.
    """
    _check_columns(dataset)
    # Arrow format reads the column without building Python objects per row, and honours the
    # indices mapping of a `select`/`shuffle`-ed dataset.
    column = dataset.with_format("arrow", columns=["captions"])[:].column("captions")
    counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    captions = pc.list_flatten(column).to_pylist()
    caption_to_image = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return captions, caption_to_image


def _as_float32_features(features: Any, image_index: int) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(
            f"features of image row {image_index} must be (n_regions, feature_dim), "
            f"found shape {features.shape}"
        )
    # Features may be stored as float16 to halve the disk; the models compute in float32.
    return features.astype(np.float32, copy=False)


class ImageCaptionPairs(torch.utils.data.Dataset):
    """Every (image, caption) pair of a one-row-per-image `datasets.Dataset`.

    `len(pairs)` is the total number of captions; `pairs[i]` is a dict:
        features: `(n_regions, feature_dim)` float32 np.ndarray of the image,
        caption: str,
        image_index: int, the image's row in `dataset`,
        caption_index: int, the caption's position in that row's `captions`.
    """

    def __init__(self, dataset: datasets.Dataset) -> None:
        _check_columns(dataset)
        self.dataset = dataset
        self.captions, self.caption_to_image = caption_table(dataset)
        # Position of each caption inside its image's caption list.
        first_of_image = np.searchsorted(self.caption_to_image, self.caption_to_image, side="left")
        self.caption_in_image = np.arange(len(self.captions), dtype=np.int64) - first_of_image
        # Numpy format returns Array2D as one ndarray per row (no per-element Python objects).
        self._features = dataset.with_format("numpy", columns=["features"])

    def __len__(self) -> int:
        return len(self.captions)

    def image_features(self, image_index: int) -> np.ndarray:
        """`(n_regions, feature_dim)` float32 features of image row `image_index`."""
        return _as_float32_features(self._features[image_index]["features"], image_index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]  # Normalises negative indices, raises IndexError out of range.
        image_index = int(self.caption_to_image[index])
        return {
            "features": self.image_features(image_index),
            "caption": self.captions[index],
            "image_index": image_index,
            "caption_index": int(self.caption_in_image[index]),
        }


class ImageFeatures(torch.utils.data.Dataset):
    """The images alone, for evaluation: `images[i]` is {features: `(n_regions, feature_dim)` float32,
    image_index: i}. Batch them with `pad_regions`; pair them with `caption_table` for the captions."""

    def __init__(self, dataset: datasets.Dataset) -> None:
        if "features" not in dataset.column_names:
            raise ValueError(f"dataset has no 'features' column; found {dataset.column_names}")
        self._features = dataset.with_format("numpy", columns=["features"])

    def __len__(self) -> int:
        return len(self._features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]  # Normalises negative indices, raises IndexError out of range.
        return {
            "features": _as_float32_features(self._features[index]["features"], index),
            "image_index": index,
        }
