"""(image, caption) pairs over a dataset with one row per image.

The dataset keeps one row per image (`image_id`, `features` Array2D `(n_regions, feature_dim)`,
optional `boxes`, `captions` list[str]); training iterates over captions. `ImageCaptionPairs` indexes
every (row, caption) pair once at construction from the caption counts and reads the image's features
lazily, so features are never duplicated per caption.

Features are read straight from the dataset's Arrow buffers (`ArrowFeatureRows`): a row is a numpy view
of the memory-mapped column, copied once into float32. The `datasets` numpy formatter builds the same
array through per-row table slicing and formatting, which costs several times more per row
(benchmarks/convert_scale.py measures the loader).
"""

from __future__ import annotations

import warnings
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

REQUIRED_COLUMNS = ("features", "captions")
# torch runs an elementwise copy of fewer elements than its grain (32768) on the calling thread.
_SERIAL_COPY_ELEMENTS = 16384


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


class ArrowFeatureChunk:
    """Numpy views of one Arrow chunk of a `list<list<float>>` (Array2D storage) column, without copying.

    Row r's values are `values[inner[outer[r]] : inner[outer[r + 1]]]`: `outer` indexes the region lists,
    `inner` the floats (the offsets already account for a sliced chunk's offset).
    """

    def __init__(self, chunk: pa.Array) -> None:
        if isinstance(chunk, pa.ExtensionArray):
            chunk = chunk.storage  # Array2D is stored as list<list<value>>
        regions = chunk.values
        self.outer = chunk.offsets.to_numpy()
        if isinstance(regions, pa.FixedSizeListArray):
            self.inner = np.arange(len(regions) + 1, dtype=np.int64) * regions.type.list_size
        else:
            self.inner = regions.offsets.to_numpy()
        floats = regions.values
        # Missing values cannot be viewed; the copy turns them into NaN, which the collator reports.
        self.values = floats.to_numpy(zero_copy_only=floats.null_count == 0)
        self.valid = None if chunk.null_count == 0 else chunk.is_valid().to_numpy(zero_copy_only=False)

    def row(self, local: int) -> np.ndarray | None:
        """`(n_regions, feature_dim)` view of row `local`; None when the row is null or is not a matrix
        (region lists of different lengths)."""
        if self.valid is not None and not self.valid[local]:
            return None
        starts = self.inner[self.outer[local] : self.outer[local + 1] + 1]
        if len(starts) == 1:
            return self.values[:0].reshape(0, 0)  # no region: the collator names the row
        lengths = np.diff(starts)
        if np.any(lengths != lengths[0]):
            return None
        return self.values[starts[0] : starts[-1]].reshape(len(lengths), int(lengths[0]))

    def describe(self, local: int) -> str:
        """What row `local` holds, for an error message."""
        if self.valid is not None and not self.valid[local]:
            return "a null row"
        lengths = np.diff(self.inner[self.outer[local] : self.outer[local + 1] + 1])
        return f"regions of {sorted(set(lengths.tolist()))} values"


class ArrowFeatureRows:
    """Row reads of a dataset's `features` column through its (memory-mapped) Arrow buffers.

    `rows[i]` is row i's `(n_regions, feature_dim)` features as a read-only numpy view of the Arrow
    buffer, in the stored dtype; it follows the dataset's `select`/`shuffle` indices. The views are built
    on first use and never pickled: a DataLoader worker rebuilds them over its own memory map instead of
    receiving a copy of the column.
    """

    def __init__(self, dataset: datasets.Dataset, column: str = "features") -> None:
        if column not in dataset.column_names:
            raise ValueError(f"dataset has no {column!r} column; found {dataset.column_names}")
        self.dataset = dataset
        self.column = column
        self._chunks: list[ArrowFeatureChunk] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "column": self.column, "_chunks": None}

    def _build(self) -> None:
        column = self.dataset.data.column(self.column)  # the physical table, before any indices mapping
        self._chunks = [ArrowFeatureChunk(chunk) for chunk in column.chunks]
        self._chunk_starts = np.cumsum([0] + [len(chunk) for chunk in column.chunks])
        # `_indices` maps a select/shuffle-ed dataset's rows to the table's rows (None: the identity).
        indices = self.dataset._indices
        self._physical = None if indices is None else indices.column(0).to_numpy().astype(np.int64)

    def __getitem__(self, index: int) -> np.ndarray:
        """Row `index`'s `(n_regions, feature_dim)` features view (ValueError when not a matrix)."""
        if self._chunks is None:
            self._build()
        physical = index if self._physical is None else int(self._physical[index])
        chunk = int(np.searchsorted(self._chunk_starts, physical, side="right")) - 1
        local = physical - int(self._chunk_starts[chunk])
        features = self._chunks[chunk].row(local)
        if features is None:
            raise ValueError(
                f"features of image row {index} must be (n_regions, feature_dim), "
                f"found {self._chunks[chunk].describe(local)}"
            )
        return features


def as_float32(features: np.ndarray) -> np.ndarray:
    """A writable float32 copy of one image's features view.

    Features may be stored as float16 to halve the disk; the models compute in float32. torch converts
    half to float with vector instructions, several times faster than numpy's `astype`; it converts in
    slices below its parallel grain so that the copy runs on the calling thread (on a busy machine a
    thread-pool hand-off per row costs more than the conversion). The copy also detaches the array from
    the memory map (writable, and no page of the file stays referenced).
    """
    if features.dtype == np.float32:
        return features.copy()
    converted = np.empty(features.shape, dtype=np.float32)
    target = torch.from_numpy(converted).view(-1)
    with warnings.catch_warnings():
        # torch warns that the view is read-only: it is only read, into the new float32 array.
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(np.ascontiguousarray(features)).view(-1)
    for start in range(0, source.numel(), _SERIAL_COPY_ELEMENTS):
        target[start : start + _SERIAL_COPY_ELEMENTS].copy_(source[start : start + _SERIAL_COPY_ELEMENTS])
    return converted


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
        self._features = ArrowFeatureRows(dataset)

    def __len__(self) -> int:
        return len(self.captions)

    def image_features(self, image_index: int) -> np.ndarray:
        """`(n_regions, feature_dim)` float32 features of image row `image_index`."""
        return as_float32(self._features[image_index])

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
        self._features = ArrowFeatureRows(dataset)

    def __len__(self) -> int:
        return len(self._features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]  # Normalises negative indices, raises IndexError out of range.
        return {"features": as_float32(self._features[index]), "image_index": index}
