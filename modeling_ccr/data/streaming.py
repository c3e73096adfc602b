"""Training on a corpus read as a stream (`datasets.IterableDataset`), for corpora too large to copy.

`load_dataset(..., streaming=True)` reads Parquet or Arrow files as they are, without writing the Arrow
cache that a map-style `load_dataset` makes (a second copy of the corpus on disk). Training pairs are
formed while the rows stream by:

1. an index pass reads only `image_id` and `captions` (every caption, in corpus order), so the pairs are
   counted (`len()`: the Trainer runs epochs and needs no `max_steps`), the vocabulary can be built, and
   each image gets its corpus row as `image_index`, exactly as `ImageCaptionPairs` numbers them;
2. each epoch, `datasets` shuffles the shard order and the rows through a buffer (seeded, new order per
   epoch via `set_epoch`);
3. pairs are drawn from a window of `shuffle_buffer` images: each draw takes a random image of the window
   and one of its unused captions; an image leaves the window when its last caption is drawn and the next
   streamed image takes its place. Every caption of every image is drawn exactly once per epoch, and the
   captions of one image spread over the window instead of arriving side by side (SCAN's hinge takes the
   hardest in-batch negative: five captions of one image in a batch would leave fewer negatives).

Memory: up to 2 x `shuffle_buffer` images (the `datasets` buffer and the window), per DataLoader worker.
Validation and test splits are small and are ranked as whole galleries, so they are read map-style
(`load_streaming_corpus`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..errors import UserError
from .pairs import ArrowFeatureChunk, as_float32
from .schema import MAX_FEATURE_MAGNITUDE

STREAMED_COLUMNS = ("image_id", "features", "captions")
# Images in the datasets shuffle buffer and in the caption window (each): 1024 x 36 x 2048 float32 is
# ~300 MB. In batches of 128 drawn from a 1024-image window, ~10 % of the pairs share their image with
# another pair of the batch (2 % with a full shuffle; measured on 5,000 generated images x 5 captions).
DEFAULT_SHUFFLE_BUFFER = 1024
# Rows per Arrow batch in the index pass.
_INDEX_BATCH_ROWS = 4096
# Shards of a save_to_disk split read as a stream: enough for several DataLoader workers.
_SAVED_SPLIT_SHARDS = 16


class StreamingCorpusError(UserError, ValueError):
    """A streamed corpus that cannot be trained on; the message names the source, row, image id and field."""


@dataclass
class _WindowImage:
    """One image of the caption window: its corpus row, stored features and the captions not yet drawn."""

    row: int
    features: np.ndarray
    captions: list[str]
    undrawn: list[int] = field(default_factory=list)


class StreamingImageCaptionPairs(torch.utils.data.IterableDataset):
    """Every (image, caption) pair of a one-row-per-image `datasets.IterableDataset`, once per epoch.

    Items are the dicts of `ImageCaptionPairs` (features `(n_regions, feature_dim)` float32, caption,
    image_index: the image's row in corpus order, caption_index), in a seeded, buffered random order that
    changes with `set_epoch`. `len()` is the number of pairs; `captions` lists them in corpus order (for a
    vocabulary), `image_ids` the images.

    Args:
        rows: the streamed split, with columns `image_id` (unique), `features`, `captions`.
        seed: the shuffle seed (the run's seed).
        shuffle_buffer: images in the shuffle buffer and in the caption window (see the module docstring).
        captions_per_image: when given, every image must have exactly this many captions.
        source: names the split in error messages.
    """

    def __init__(
        self,
        rows: datasets.IterableDataset,
        seed: int = 0,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        captions_per_image: int | None = None,
        source: str = "train",
    ) -> None:
        columns = list(rows.features or {})
        missing = [c for c in STREAMED_COLUMNS if c not in columns]
        if missing:
            raise StreamingCorpusError(
                f"{source}: streamed corpus is missing column(s) {missing}; expected {list(STREAMED_COLUMNS)}, "
                f"found {columns}"
            )
        if shuffle_buffer < 1:
            raise StreamingCorpusError(f"{source}: shuffle_buffer must be >= 1 image, got {shuffle_buffer}")
        self.source = source
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        rows = rows.select_columns(list(STREAMED_COLUMNS))
        self.image_ids, counts, self.captions = self._index(rows, captions_per_image)
        self.caption_counts = counts
        self._row_of = {image_id: row for row, image_id in enumerate(self.image_ids)}
        self.feature_dim = self._first_feature_dim(rows)
        # datasets keeps the epoch in shared memory: persistent DataLoader workers see set_epoch too. Shards
        # are read one after another (in a shuffled order): the caption window mixes them, and datasets'
        # concurrent shard readers wait seconds at the end of each pass for their threads to shut down.
        self._shuffled = rows.shuffle(
            seed=seed, buffer_size=shuffle_buffer, max_buffer_input_shards=1
        ).with_format("arrow")

    # ------------------------------------------------------------------------------------------ index

    def _index(
        self, rows: datasets.IterableDataset, captions_per_image: int | None
    ) -> tuple[list[str], np.ndarray, list[str]]:
        """Image ids, caption counts `(n_images,)` and all captions in corpus order, checked."""
        image_ids: list[str] = []
        counts: list[np.ndarray] = []
        captions: list[str] = []
        seen: dict[str, int] = {}
        index_rows = rows.select_columns(["image_id", "captions"]).with_format("arrow")
        for table in index_rows.iter(batch_size=_INDEX_BATCH_ROWS):
            ids = table.column("image_id").to_pylist()
            column = table.column("captions")
            batch_counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
            batch_captions = pc.list_flatten(column).to_pylist()
            self._check_index_batch(
                len(image_ids), ids, batch_counts, batch_captions, captions_per_image, seen
            )
            image_ids.extend(ids)
            counts.append(batch_counts)
            captions.extend(batch_captions)
        if not image_ids:
            raise StreamingCorpusError(f"{self.source}: the streamed corpus has no rows")
        return image_ids, np.concatenate(counts), captions

    def _check_index_batch(
        self,
        first_row: int,
        ids: list[Any],
        counts: np.ndarray,
        captions: list[Any],
        captions_per_image: int | None,
        seen: dict[str, int],
    ) -> None:
        """Unique non-empty image ids, non-empty captions, `captions_per_image` each (when given)."""
        for offset, image_id in enumerate(ids):
            row = first_row + offset
            if not isinstance(image_id, str) or not image_id:
                raise StreamingCorpusError(
                    f"{self._where(row, image_id, 'image_id')}: empty or missing image id"
                )
            if image_id in seen:
                raise StreamingCorpusError(
                    f"{self._where(row, image_id, 'image_id')}: repeated, first at row {seen[image_id]}; "
                    "image ids must be unique within a split"
                )
            seen[image_id] = row
            if captions_per_image is not None and counts[offset] != captions_per_image:
                raise StreamingCorpusError(
                    f"{self._where(row, image_id, 'captions')}: {counts[offset]} captions, "
                    f"expected {captions_per_image} per image"
                )
        ends = np.cumsum(counts)
        for position, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                offset = int(np.searchsorted(ends, position, side="right"))
                raise StreamingCorpusError(
                    f"{self._where(first_row + offset, ids[offset], 'captions')}: empty caption "
                    f"{position - int(ends[offset] - counts[offset])}"
                )

    def _first_feature_dim(self, rows: datasets.IterableDataset) -> int:
        table = next(iter(rows.select_columns(["features"]).with_format("arrow").iter(batch_size=1)))
        return int(self._checked_features(table, 0, self.image_ids[0], None).shape[1])

    def _where(self, row: int, image_id: Any, column: str) -> str:
        return f"{self.source} (streamed), column {column!r}, row {row} (image_id {image_id!r})"

    # ------------------------------------------------------------------------------------------- rows

    def _checked_features(
        self, table: pa.Table, local: int, image_id: str, feature_dim: int | None
    ) -> np.ndarray:
        """Row `local` of an Arrow table's features, as a view in the stored dtype, checked."""
        row = self._row_of[image_id]
        features = ArrowFeatureChunk(_single_chunk(table.column("features"))).row(local)
        where = self._where(row, image_id, "features")
        if features is None or features.shape[0] == 0:
            raise StreamingCorpusError(f"{where}: expected (n_regions >= 1, feature_dim) features")
        if feature_dim is not None and features.shape[1] != feature_dim:
            raise StreamingCorpusError(
                f"{where}: feature_dim {features.shape[1]}, expected {feature_dim} (the first row's)"
            )
        magnitude = float(np.abs(features).max())
        if not math.isfinite(magnitude) or magnitude > MAX_FEATURE_MAGNITUDE:
            raise StreamingCorpusError(
                f"{where}: features reach |x| = {magnitude:.3g} (NaN, Inf or beyond {MAX_FEATURE_MAGNITUDE:g})"
            )
        return features

    def _images(self) -> Iterator[_WindowImage]:
        """The streamed images of this epoch (this worker's shards), checked against the index."""
        for table in self._shuffled:
            image_id = table.column("image_id")[0].as_py()
            if image_id not in self._row_of:
                raise StreamingCorpusError(
                    f"{self.source} (streamed): image_id {image_id!r} was not in the corpus when it was "
                    "indexed; the files changed during the run"
                )
            row = self._row_of[image_id]
            captions = table.column("captions")[0].as_py()
            if len(captions) != self.caption_counts[row]:
                raise StreamingCorpusError(
                    f"{self._where(row, image_id, 'captions')}: {len(captions)} captions, "
                    f"{self.caption_counts[row]} when indexed; the files changed during the run"
                )
            if captions:
                yield _WindowImage(
                    row, self._checked_features(table, 0, image_id, self.feature_dim), captions
                )

    # -------------------------------------------------------------------------------------- iteration

    def __len__(self) -> int:
        return len(self.captions)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) before each epoch: a new order per epoch."""
        self._shuffled.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, self._shuffled.epoch, 0 if worker is None else worker.id])
        window: list[_WindowImage] = []
        for image in self._images():
            image.undrawn = list(rng.permutation(len(image.captions)))
            window.append(image)
            while len(window) >= self.shuffle_buffer:  # draw until an image is used up
                yield self._draw(window, rng)
        while window:
            yield self._draw(window, rng)

    @staticmethod
    def _draw(window: list[_WindowImage], rng: np.random.Generator) -> dict[str, Any]:
        """One pair: a random image of the window and its next undrawn caption; a used-up image leaves."""
        slot = int(rng.integers(len(window)))
        image = window[slot]
        caption_index = int(image.undrawn.pop())
        if not image.undrawn:
            window[slot] = window[-1]
            window.pop()
        return {
            "features": as_float32(image.features),
            "caption": image.captions[caption_index],
            "image_index": image.row,
            "caption_index": caption_index,
        }


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    """A column as one Arrow array (a streamed row's column is one chunk: no copy)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


# ---------------------------------------------------------------------------------------------- sources


def load_streaming_corpus(source: str | Path) -> tuple[datasets.IterableDataset, datasets.DatasetDict]:
    """The `train` split of a corpus folder as a stream, and its other splits map-style.

    `source` is a folder of Parquet or Arrow files that `datasets.load_dataset` reads by split from their
    names (`train-00000-of-00008.parquet`, `data/validation-*.parquet`, `train/*.arrow`, ...; what
    `Dataset.to_parquet` per split or a Hub dataset's files look like), or a `save_to_disk` folder. The
    train files are read as they are, never copied; the other splits (validation, test: ranked as whole
    galleries) are converted to a memory-mapped Arrow cache (`datasets`' cache folder), theirs only.
    """
    path = Path(source)
    if not path.is_dir():
        raise StreamingCorpusError(f"data.source: no corpus folder at {path}")
    if (path / "dataset_dict.json").is_file():
        corpus = datasets.load_from_disk(str(path))
        if "train" not in corpus:
            raise StreamingCorpusError(f"data.source: {path} has no 'train' split; found {list(corpus)}")
        train = corpus["train"].to_iterable_dataset(num_shards=min(_SAVED_SPLIT_SHARDS, len(corpus["train"])))
        return train, datasets.DatasetDict({name: split for name, split in corpus.items() if name != "train"})
    try:
        builder = datasets.load_dataset_builder(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise StreamingCorpusError(
            f"data.source: {path} holds no Parquet or Arrow files that datasets can read by split "
            f"({str(err).splitlines()[0]})"
        ) from err
    files = builder.config.data_files or {}
    if "train" not in files:
        raise StreamingCorpusError(
            f"data.source: {path} has no train files; found splits {sorted(map(str, files))} (name the files "
            "train-*.parquet, validation-*.parquet, test-*.parquet)"
        )
    train = datasets.load_dataset(str(path), split="train", streaming=True)
    others = {
        str(name): datasets.load_dataset(builder.name, data_files={str(name): list(found)}, split=str(name))
        for name, found in files.items()
        if name != "train"
    }
    return train, datasets.DatasetDict(others)
