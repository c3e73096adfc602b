"""The Hugging Face Datasets schema of a region-feature corpus, and its validator.

One row per image:

- `image_id`: string, unique within a split.
- `features`: `Array2D(shape=(None, feature_dim))`, i.e. `(n_regions, feature_dim)` float32 (or float16 to
  halve the disk; readers upcast to float32). `n_regions` may differ between rows.
- `boxes` (optional): `Array2D(shape=(None, 4))` float32, `(n_regions, 4)` pixel boxes `(x1, y1, x2, y2)`
  of the exact regions behind `features`, row for row (bottom-up-attention TSV "boxes"). The attention
  metrics compare them with the phrases' gold boxes.
- `image_size`: `(width, height)` int32 pixels.
- `captions`: list of strings, typically 5 per image.
- `caption_ids` (optional): one string per caption (same length and order as `captions`), the caption's
  id in its source (Karpathy `sentid`), so that results trace back to the source's captions.
- `phrases` (optional): one list per caption (same length and order as `captions`) of grounded phrases,
  each a struct:
    - `entity_id`: string, unique within the image and shared by every caption mentioning that entity;
    - `phrase`: the phrase text, e.g. "a red dog";
    - `phrase_type`: e.g. "animals", "people", "scene" (Flickr30k Entities types);
    - `first_word`, `num_words`: int32 word span of the phrase in `split_words(caption)`
      (`modeling_ccr.tokenization.split_words`: lower-case, regex `\\w+|[^\\w\\s]`);
    - `boxes`: list of `(x1, y1, x2, y2)` float32 pixel gold boxes. An entity may have several (its
      ground truth is their union) or none (no-box / not-visual phrases, skipped by the metrics).

Word-index convention: word `i` of `split_words(caption)` is token `i + 1` of the encoded caption,
because the tokenizer prepends `<start>` (`modeling_ccr.tokenization.word_token_index`). Phrase spans
are stored in WORD indices; converting them to token indices is the consumer's job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..tokenization import split_words

REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "features", "captions")
FEATURE_DTYPES: tuple[str, ...] = ("float32", "float16")

# Rows per chunk when scanning features: large enough to vectorise, small enough to stay in cache-ish memory
# (1024 rows x 36 regions x 2048 dims x 4 bytes = 300 MB at bottom-up-attention scale).
_FEATURE_CHUNK_ROWS = 1024


def phrase_feature() -> dict[str, Any]:
    """The struct of one grounded phrase (see the module docstring)."""
    return {
        "entity_id": datasets.Value("string"),
        "phrase": datasets.Value("string"),
        "phrase_type": datasets.Value("string"),
        "first_word": datasets.Value("int32"),
        "num_words": datasets.Value("int32"),
        "boxes": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
    }


def corpus_features(
    feature_dim: int,
    dtype: str = "float32",
    with_boxes: bool = True,
    with_phrases: bool = True,
    with_caption_ids: bool = False,
) -> datasets.Features:
    """The `datasets.Features` of a region-feature corpus with `feature_dim`-d region features.

    `dtype` is the storage dtype of `features` ("float32" or "float16"); boxes are always float32.
    `List` (not `Sequence`) is used throughout so that a list of structs stays a list of structs.
    """
    if feature_dim < 1:
        raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"features dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    columns: dict[str, Any] = {
        "image_id": datasets.Value("string"),
        "features": datasets.Array2D(shape=(None, feature_dim), dtype=dtype),
    }
    if with_boxes:
        columns["boxes"] = datasets.Array2D(shape=(None, 4), dtype="float32")
    columns["image_size"] = datasets.List(datasets.Value("int32"), length=2)
    columns["captions"] = datasets.List(datasets.Value("string"))
    if with_caption_ids:
        columns["caption_ids"] = datasets.List(datasets.Value("string"))
    if with_phrases:
        columns["phrases"] = datasets.List(datasets.List(phrase_feature()))
    return datasets.Features(columns)


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def _arrow_column(dataset: datasets.Dataset, column: str) -> pa.Array:
    """One column as a single Arrow array (honours `select`/`shuffle` indices), Array2D as its list storage."""
    array = dataset.with_format("arrow", columns=[column])[:].column(column).combine_chunks()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage  # Array2D is stored as list<list<value>>
    return array


def _list_lengths(array: pa.Array) -> np.ndarray:
    """`(n_rows,)` int64 lengths of a list column; null rows count as length 0."""
    return pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _first_mismatch(found: np.ndarray, expected: np.ndarray | int) -> tuple[int | None, int]:
    """The first row whose count differs from the expected count(s) (None if none), and how many differ."""
    wrong = np.flatnonzero(found != expected)
    return (int(wrong[0]) if len(wrong) else None), len(wrong)


def _image_ids(dataset: datasets.Dataset) -> list[str]:
    return dataset.with_format("arrow", columns=["image_id"])[:].column("image_id").to_pylist()


def _where(split_name: str, column: str, row: int, image_ids: list[str]) -> str:
    return f"split {split_name!r}, column {column!r}, row {row} (image_id {image_ids[row]!r})"


def _feature_chunks(dataset: datasets.Dataset) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(first row, list of `(n_regions, feature_dim)` arrays) per chunk of `_FEATURE_CHUNK_ROWS` rows."""
    numpy_view = dataset.with_format("numpy", columns=["features"])
    for start in range(0, len(dataset), _FEATURE_CHUNK_ROWS):
        block = numpy_view[start : start + _FEATURE_CHUNK_ROWS]["features"]
        # Rows of equal n_regions come back stacked as one 3-d array, ragged ones as an object array.
        yield start, list(block)


def _check_features(
    dataset: datasets.Dataset, split_name: str, expected_feature_dim: int | None, image_ids: list[str]
) -> np.ndarray:
    """Check feature shape, dim and finiteness; return `(n_rows,)` int64 n_regions per row."""
    declared = dataset.features["features"]
    if isinstance(declared, datasets.Array2D) and expected_feature_dim is not None:
        declared_dim = declared.shape[1]
        if declared_dim is not None and declared_dim != expected_feature_dim:
            raise ValueError(
                f"split {split_name!r}, column 'features': feature_dim {declared_dim} in the schema, "
                f"expected {expected_feature_dim}"
            )
    n_regions = np.zeros(len(dataset), dtype=np.int64)
    for start, rows in _feature_chunks(dataset):
        for offset, features in enumerate(rows):
            row = start + offset
            if features.ndim != 2:
                raise ValueError(
                    f"{_where(split_name, 'features', row, image_ids)}: expected (n_regions, feature_dim), "
                    f"found shape {features.shape}"
                )
            if expected_feature_dim is not None and features.shape[1] != expected_feature_dim:
                raise ValueError(
                    f"{_where(split_name, 'features', row, image_ids)}: feature_dim {features.shape[1]}, "
                    f"expected {expected_feature_dim}"
                )
            n_regions[row] = features.shape[0]
        # One vectorised finiteness test per chunk; only a failing chunk is searched row by row.
        flat = np.concatenate([r.reshape(-1) for r in rows]) if rows else np.zeros(0)
        if not np.isfinite(flat).all():
            for offset, features in enumerate(rows):
                bad = ~np.isfinite(features)
                if bad.any():
                    region, dim = (int(i) for i in np.argwhere(bad)[0])
                    raise ValueError(
                        f"{_where(split_name, 'features', start + offset, image_ids)}: non-finite value "
                        f"{features[region, dim]} at region {region}, dim {dim}"
                    )
    return n_regions


def _check_captions(
    dataset: datasets.Dataset, split_name: str, captions_per_image: int | None, image_ids: list[str]
) -> tuple[np.ndarray, list[str]]:
    """Check caption counts and emptiness; return `(n_rows,)` caption counts and all captions in order."""
    column = _arrow_column(dataset, "captions")
    counts = _list_lengths(column)
    if captions_per_image is not None:
        row, n_wrong = _first_mismatch(counts, captions_per_image)
        if row is not None:
            raise ValueError(
                f"{_where(split_name, 'captions', row, image_ids)}: {counts[row]} captions, "
                f"expected {captions_per_image} (and {n_wrong - 1} more rows differ)"
            )
    captions = pc.list_flatten(column).to_pylist()
    for index, caption in enumerate(captions):
        if caption is None or not caption.strip():
            row = int(np.searchsorted(np.cumsum(counts), index, side="right"))
            raise ValueError(
                f"{_where(split_name, 'captions', row, image_ids)}: caption "
                f"{index - int(counts[:row].sum())} is empty: {caption!r}"
            )
    return counts, captions


def _check_boxes(
    dataset: datasets.Dataset, split_name: str, n_regions: np.ndarray, image_ids: list[str]
) -> None:
    box_column = _arrow_column(dataset, "boxes")
    n_boxes = _list_lengths(box_column)
    row, _ = _first_mismatch(n_boxes, n_regions)
    if row is not None:
        raise ValueError(
            f"{_where(split_name, 'boxes', row, image_ids)}: {n_boxes[row]} boxes but {n_regions[row]} "
            "feature regions; boxes must be the boxes of the exact regions behind the features"
        )
    coordinates = _list_lengths(pc.list_flatten(box_column))
    if len(coordinates) and (coordinates != 4).any():
        raise ValueError(
            f"split {split_name!r}, column 'boxes': every box must have 4 coordinates (x1, y1, x2, y2), "
            f"found {int(coordinates[coordinates != 4][0])}"
        )


def _check_phrases(
    dataset: datasets.Dataset,
    split_name: str,
    caption_counts: np.ndarray,
    captions: list[str],
    image_ids: list[str],
) -> None:
    column = _arrow_column(dataset, "phrases")
    phrase_list_counts = _list_lengths(column)
    row, _ = _first_mismatch(phrase_list_counts, caption_counts)
    if row is not None:
        raise ValueError(
            f"{_where(split_name, 'phrases', row, image_ids)}: {phrase_list_counts[row]} phrase lists but "
            f"{caption_counts[row]} captions; expected one phrase list per caption"
        )
    per_caption = pc.list_flatten(column)  # one entry per caption
    phrases = pc.list_flatten(per_caption)  # struct array, one entry per phrase
    if len(phrases) == 0:
        return
    phrase_caption = pc.list_parent_indices(per_caption).to_numpy()
    first = pc.fill_null(phrases.field("first_word"), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    count = pc.fill_null(phrases.field("num_words"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    caption_words = [split_words(c) for c in captions]
    n_words = np.array([len(w) for w in caption_words], dtype=np.int64)[phrase_caption]
    bad = np.flatnonzero((first < 0) | (count < 1) | (first + count > n_words))
    caption_rows = np.repeat(np.arange(len(caption_counts)), caption_counts)
    texts = phrases.field("phrase").to_pylist()
    if len(bad):
        i = int(bad[0])
        row = int(caption_rows[phrase_caption[i]])
        raise ValueError(
            f"{_where(split_name, 'phrases', row, image_ids)}: phrase {texts[i]!r} has word span "
            f"first_word={first[i]}, num_words={count[i]}, out of range of its caption "
            f"{captions[phrase_caption[i]]!r} ({n_words[i]} words)"
        )
    # A span inside the caption can still point at the wrong words (an off-by-one from <start>, say).
    for i, text in enumerate(texts):
        words = caption_words[phrase_caption[i]][first[i] : first[i] + count[i]]
        if text is not None and words != split_words(text):
            row = int(caption_rows[phrase_caption[i]])
            raise ValueError(
                f"{_where(split_name, 'phrases', row, image_ids)}: phrase {text!r} has word span "
                f"first_word={first[i]}, num_words={count[i]}, which covers {' '.join(words)!r} in caption "
                f"{captions[phrase_caption[i]]!r}"
            )


def validate_corpus(
    dataset: datasets.Dataset,
    split_name: str,
    expected_feature_dim: int | None = None,
    captions_per_image: int | None = None,
) -> None:
    """Raise `ValueError` naming split, column, row and image_id at the first problem found.

    Checks: required columns (`image_id`, `features`, `captions`); features are `(n_regions,
    feature_dim)` with `feature_dim == expected_feature_dim` when given, and finite; no empty caption;
    `captions_per_image` captions per row when given; optional `boxes` have one box per feature region;
    optional `caption_ids` have one id per caption;
    optional `phrases` have one list per caption and word spans that lie inside the caption and cover the
    phrase's words. Reads columns through Arrow/numpy, not Python rows: ~3000 rows take well under 2 s.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"split {split_name!r} is missing required column(s) {missing}; "
            f"expected {list(REQUIRED_COLUMNS)}, found {dataset.column_names}"
        )
    image_ids = _image_ids(dataset)
    n_regions = _check_features(dataset, split_name, expected_feature_dim, image_ids)
    caption_counts, captions = _check_captions(dataset, split_name, captions_per_image, image_ids)
    if "boxes" in dataset.column_names:
        _check_boxes(dataset, split_name, n_regions, image_ids)
    if "caption_ids" in dataset.column_names:
        id_counts = _list_lengths(_arrow_column(dataset, "caption_ids"))
        row, _ = _first_mismatch(id_counts, caption_counts)
        if row is not None:
            raise ValueError(
                f"{_where(split_name, 'caption_ids', row, image_ids)}: {id_counts[row]} caption ids but "
                f"{caption_counts[row]} captions; expected one id per caption"
            )
    if "phrases" in dataset.column_names:
        _check_phrases(dataset, split_name, caption_counts, captions, image_ids)
