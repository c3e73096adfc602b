"""Convert the files researchers already have into the project's corpus (`modeling_ccr.data.schema`).

Two routes, both streaming (one window of images in memory, shards written as they fill), both writing
`save_to_disk`'s layout so that `datasets.load_from_disk` memory-maps the result:

- `convert_precomp`: a SCAN precomp folder (features + captions, no boxes), optionally aligned with a
  Karpathy split file (image ids, caption ids), merged with bottom-up-attention TSV boxes by image id, and
  grounded with Flickr30k Entities.
- `convert_butd_tsv`: bottom-up-attention TSV files (features + boxes) with the captions and splits of a
  Karpathy split file, optionally grounded with Flickr30k Entities.

Wherever two sources meet, they are checked against each other, never trusted by position alone:
precomp captions against Karpathy sentences, Entities sentences against the corpus captions (both after
`normalise_caption`), TSV features against precomp features before their boxes are taken, TSV and
Entities image sizes. An image that fails a check stops the conversion with a message naming the image
and the files, or, with `skip_bad=True`, is left out and listed in the report (and in
`conversion_report.json` beside the corpus): nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from ...errors import UserError
from ...text.tokenization import split_words
from ..flickr30k_entities import SENTENCES_DIR, EntitiesFormatError, read_image_entities
from ..schema import corpus_features
from ..text_files import ends_with_line_ending
from .butd_tsv import TsvRow, read_tsv_rows
from .karpathy import CORPUS_SPLIT_OF, KarpathyImage, images_by_split, read_karpathy
from .scan_precomp import PrecompSplit, available_splits, open_precomp_split

# Precomp split -> corpus split, and the Karpathy splits its images come from (file order, concatenated).
PRECOMP_CORPUS_SPLIT: dict[str, str] = {
    "train": "train",
    "dev": "validation",
    "test": "test",
    "testall": "testall",
}
PRECOMP_KARPATHY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "dev": ("val",),
    "test": ("test",),
    "testall": ("test",),
}
REPORT_FILE = "conversion_report.json"
SHARD_BYTES = 500 * 2**20  # the shard size `save_to_disk` aims at
BATCH_BYTES = 16 * 2**20  # rows buffered before a write: bounded memory, few record batches
# TSV features must match precomp features this closely before the TSV boxes are taken for them.
FINGERPRINT_RTOL = 1e-3


class ConversionError(UserError, ValueError):
    """Two sources disagree, or an item cannot be converted; the message names the image and the files."""


def normalise_caption(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: what two copies of a caption must share
    ("A man , in a t-shirt ." and "a man in a t-shirt" both become "a man in a t shirt")."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


# ---------------------------------------------------------------------------------------------------------
# Bad items and the report
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ConversionReport:
    """What a conversion wrote and what it left out, and why."""

    output: str
    images: dict[str, int] = dataclasses.field(default_factory=dict)  # corpus split -> images written
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)  # split, image_id, reason
    notes: list[str] = dataclasses.field(default_factory=list)  # counted, deliberate omissions

    def skip(self, split: str, image_id: str, reason: str, skip_bad: bool) -> None:
        """Stop the conversion with `reason`, or (with `skip_bad`) record the image as left out."""
        if not skip_bad:
            raise ConversionError(f"{reason} (pass --skip-bad to leave such images out and list them)")
        self.skipped.append({"split": split, "image_id": image_id, "reason": reason})

    def summary(self, shown: int = 10) -> str:
        lines = [f"Wrote {self.output}: " + ", ".join(f"{s} {n} images" for s, n in self.images.items())]
        lines += [f"  note: {note}" for note in self.notes]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} bad item(s) (all listed in {REPORT_FILE}):")
            lines += [f"    [{s['split']}] {s['image_id']}: {s['reason']}" for s in self.skipped[:shown]]
            if len(self.skipped) > shown:
                lines.append(f"    ... and {len(self.skipped) - shown} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Streaming writer of save_to_disk's layout
# ---------------------------------------------------------------------------------------------------------


def _nested_list_array(arrays: Sequence[np.ndarray], dtype: str) -> pa.Array:
    """`list<list<dtype>>` storage of a column of `(n_i, width)` arrays, built without Python objects."""
    width = arrays[0].shape[1]
    values = pa.array(np.concatenate([a.reshape(-1) for a in arrays]).astype(dtype, copy=False))
    n_rows = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(int(n_rows.sum()) + 1, dtype=np.int32) * width), values
    )
    outer_offsets = np.concatenate([[0], np.cumsum(n_rows)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


class SplitWriter:
    """Writes the rows of one split into `directory` as `save_to_disk` does: Arrow shards
    `data-0000i-of-0000n.arrow`, `dataset_info.json` and `state.json`, shards written as they fill.

    `add(row)` takes a dict with the columns of `features` (Array2D columns as numpy arrays).
    """

    def __init__(self, directory: Path, features: datasets.Features) -> None:
        self.directory = directory
        self.features = features
        self.schema = features.arrow_schema
        self.directory.mkdir(parents=True, exist_ok=True)
        self._array2d = {
            name: feature.dtype for name, feature in features.items() if isinstance(feature, datasets.Array2D)
        }
        self._rows: list[dict[str, Any]] = []
        self._buffered_bytes = 0
        self._shards: list[Path] = []
        self._writer: ArrowWriter | None = None
        self._shard_bytes = 0
        self.n_rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._buffered_bytes += sum(row[name].nbytes for name in self._array2d)
        if self._buffered_bytes >= BATCH_BYTES:
            self._flush()

    def _table(self) -> pa.Table:
        columns = []
        for field in self.schema:
            values = [row[field.name] for row in self._rows]
            if field.name in self._array2d:
                storage = _nested_list_array(values, self._array2d[field.name])
                columns.append(pa.ExtensionArray.from_storage(field.type, storage))
            else:
                columns.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            path = self.directory / f"shard-{len(self._shards)}.arrow"
            self._shards.append(path)
            self._writer = ArrowWriter(features=self.features, path=str(path))
            self._shard_bytes = 0
        table = self._table()
        self._writer.write_table(table, writer_batch_size=len(self._rows))
        self.n_rows += len(self._rows)
        self._shard_bytes += table.nbytes
        self._rows, self._buffered_bytes = [], 0
        if self._shard_bytes >= SHARD_BYTES:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.finalize()
            self._writer = None

    def close(self) -> int:
        """Write the last rows and the metadata; returns the number of rows written."""
        self._flush()
        self._close_shard()
        if not self._shards:  # an empty split still gets one (empty) shard, as save_to_disk writes
            self._shards.append(self.directory / "shard-0.arrow")
            writer = ArrowWriter(features=self.features, path=str(self._shards[0]))
            writer.finalize()
        names = [f"data-{i:05d}-of-{len(self._shards):05d}.arrow" for i in range(len(self._shards))]
        for shard, name in zip(self._shards, names, strict=True):
            shard.rename(self.directory / name)
        datasets.DatasetInfo(features=self.features).write_to_directory(str(self.directory))
        state = {
            "_data_files": [{"filename": name} for name in names],
            "_fingerprint": uuid.uuid4().hex[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (self.directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        return self.n_rows


class CorpusWriter:
    """A `DatasetDict` folder written split by split; it appears at `output` only once complete
    (it is built in a sibling folder and renamed), so a failed conversion never leaves a loadable corpus."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        if self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir())):
            raise ConversionError(
                f"{self.output}: already exists and is not an empty folder; choose a new OUT"
            )
        self.staging = self.output.parent / f".{self.output.name}.partial-{uuid.uuid4().hex[:8]}"
        self.writers: dict[str, SplitWriter] = {}

    def split(self, name: str, features: datasets.Features) -> SplitWriter:
        if name not in self.writers:
            self.writers[name] = SplitWriter(self.staging / name, features)
        return self.writers[name]

    def commit(self, report: ConversionReport) -> None:
        for name, writer in self.writers.items():
            report.images[name] = writer.close()
            if report.images[name] == 0:
                raise ConversionError(f"split {name!r}: no image left to write")
        (self.staging / "dataset_dict.json").write_text(json.dumps({"splits": list(self.writers)}))
        (self.staging / REPORT_FILE).write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
        if self.output.exists():
            self.output.rmdir()
        self.staging.rename(self.output)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Alignment checks
# ---------------------------------------------------------------------------------------------------------


def _caption_mismatch(ours: Sequence[str], theirs: Sequence[str]) -> int | None:
    """Index of the first caption that differs after `normalise_caption`, None when all agree."""
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if normalise_caption(a) != normalise_caption(b):
            return index
    return None


def entities_image_ids(root: str | Path) -> set[str]:
    """The image ids of a Flickr30k Entities folder (the stems of `Sentences/*.txt`)."""
    sentences = Path(root) / SENTENCES_DIR
    if not sentences.is_dir():
        raise EntitiesFormatError(f"{sentences}: folder not found (expected Flickr30k Entities Sentences/)")
    return {path.stem for path in sentences.glob("*.txt")}


def check_entities_coverage(
    root: str | Path, known_ids: set[str], report: ConversionReport, skip_bad: bool
) -> None:
    """An Entities file for an image the sources do not know means the ids do not line up: an error."""
    for image_id in sorted(entities_image_ids(root) - known_ids):
        report.skip(
            "entities",
            image_id,
            f"{Path(root) / SENTENCES_DIR / (image_id + '.txt')}: Entities file for image {image_id!r}, which "
            "is in none of the corpus's sources (pass --karpathy to make every split's images known)",
            skip_bad,
        )


def ground_with_entities(
    root: str | Path, image_id: str, captions: Sequence[str], image_size: tuple[int, int] | None
) -> tuple[list[str], list[list[dict[str, Any]]], tuple[int, int]]:
    """(captions, phrases, image size) of an image from its Entities files, checked against its captions.

    Captions are compared one by one after `normalise_caption`. A corpus caption is kept when it splits
    into the same words as the Entities sentence (the phrase spans index those words); otherwise the
    Entities sentence is stored. Raises `ValueError` naming the image, caption and files on a mismatch.
    """
    try:
        size, entity_captions, phrases = read_image_entities(root, image_id)
    except EntitiesFormatError as error:
        raise ValueError(f"image {image_id!r}: {error}") from None
    sentences = Path(root) / SENTENCES_DIR / f"{image_id}.txt"
    if len(entity_captions) != len(captions):
        raise ValueError(
            f"image {image_id!r}: the corpus has {len(captions)} captions, {sentences} has {len(entity_captions)}"
        )
    index = _caption_mismatch(captions, entity_captions)
    if index is not None:
        raise ValueError(
            f"image {image_id!r}, caption {index}: the corpus has {captions[index]!r}, {sentences} has "
            f"{entity_captions[index]!r} (compared ignoring case, spacing and punctuation)"
        )
    if image_size is not None and tuple(image_size) != tuple(size):
        raise ValueError(
            f"image {image_id!r}: the TSV says {tuple(image_size)} (width, height), the Entities annotation "
            f"says {tuple(size)}; the gold boxes would be in another frame than the region boxes"
        )
    # The comparison above ignores punctuation, so a last line cut just before its final " ." would pass
    # and the shorter Entities sentence be stored: a last line without its newline that differs from the
    # corpus caption is taken for what it most likely is, a file cut off mid-line.
    last = len(captions) - 1
    if (
        last >= 0
        and split_words(captions[last]) != split_words(entity_captions[last])
        and not ends_with_line_ending(sentences)
    ):
        raise ValueError(
            f"image {image_id!r}, caption {last}: {sentences}'s last line has no newline and reads "
            f"{entity_captions[last]!r}, the corpus caption {captions[last]!r}: the file looks cut off mid-line"
        )
    kept = [
        c if split_words(c) == split_words(e) else e for c, e in zip(captions, entity_captions, strict=True)
    ]
    return kept, phrases, size


def _region_fingerprint(features: np.ndarray) -> np.ndarray:
    """`(n_regions, 2)` float64 per-region sum and norm: cheap to keep for 123k images, and two feature
    sets with the same fingerprint are the same regions in the same order."""
    features = features.astype(np.float64)
    return np.stack([features.sum(axis=1), np.linalg.norm(features, axis=1)], axis=1)


@dataclasses.dataclass
class _TsvBoxes:
    where: str
    image_size: tuple[int, int]
    boxes: np.ndarray
    fingerprint: np.ndarray


def index_tsv_boxes(
    paths: Sequence[str | Path], wanted: set[str], report: ConversionReport, progress: bool
) -> dict[str, _TsvBoxes | str]:
    """image id -> its TSV boxes (or the problem of its row) for the `wanted` ids; counts the rest."""
    index: dict[str, _TsvBoxes | str] = {}
    unused, unused_bad = 0, 0
    bar = tqdm(desc="indexing TSV boxes", unit=" images", total=len(wanted), disable=not progress)
    for row in read_tsv_rows(paths):
        if row.image_id not in wanted:
            unused += 1
            unused_bad += row.problem is not None
            continue
        where = f"{row.path}, line {row.line}"
        previous = index.get(row.image_id)
        if previous is not None:
            first = previous.where if isinstance(previous, _TsvBoxes) else "an earlier row"
            index[row.image_id] = f"{where}: image_id {row.image_id!r} appears again (first at {first})"
            continue
        bar.update()
        index[row.image_id] = row.problem or _TsvBoxes(
            where, row.image_size, row.boxes.copy(), _region_fingerprint(row.features)
        )
    bar.close()
    if unused:
        report.notes.append(
            f"{unused} TSV rows are for images outside the converted splits and were not used "
            f"({unused_bad} of them malformed)"
        )
    return index


def _merge_boxes(image_id: str, features: np.ndarray, entry: _TsvBoxes | str | None) -> _TsvBoxes:
    """The TSV boxes of a precomp image, checked to belong to its regions; raises ValueError otherwise."""
    if entry is None:
        raise ValueError(f"image {image_id!r}: no TSV row has this image_id, so its regions have no boxes")
    if isinstance(entry, str):
        raise ValueError(entry)
    if len(entry.boxes) != len(features):
        raise ValueError(
            f"image {image_id!r}: {entry.where} has {len(entry.boxes)} boxes, the precomp features "
            f"{len(features)} regions"
        )
    ours = _region_fingerprint(features)
    scale = np.abs(entry.fingerprint).max() + 1.0
    if not np.allclose(ours, entry.fingerprint, rtol=FINGERPRINT_RTOL, atol=FINGERPRINT_RTOL * scale):
        raise ValueError(
            f"image {image_id!r}: the features of {entry.where} are not the precomp features of this image "
            "(region sums/norms differ), so its boxes do not belong to these regions"
        )
    return entry


# ---------------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------------


def _output_features(
    feature_dim: int, *, float16: bool, boxes: bool, phrases: bool, caption_ids: bool, sizes: bool
) -> datasets.Features:
    features = corpus_features(
        feature_dim, "float16" if float16 else "float32", boxes, phrases, with_caption_ids=caption_ids
    )
    if not sizes:  # no source knows the image sizes: leave the column out rather than fill it with nulls
        del features["image_size"]
    return features


def _storage_features(features: np.ndarray, float16: bool, image_id: str) -> np.ndarray:
    if not float16:
        return features.astype(np.float32, copy=False)
    half = features.astype(np.float16)
    if not np.isfinite(half).all():
        raise ValueError(
            f"image {image_id!r}: a feature of magnitude {np.abs(features).max():.4g} overflows float16 "
            "(max 65504); convert without --float16"
        )
    return half


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
    """How both converters treat their optional sources and bad items.

    entities_dir: a Flickr30k Entities folder (Sentences/, Annotations/) to attach phrases from;
    float16: store features as float16 (refused per image when a value overflows);
    skip_bad: leave a bad image out and list it in the report, instead of stopping;
    captions_per_image: captions kept per image (a positive integer);
    progress: show progress bars.
    """

    entities_dir: Path | None = None
    float16: bool = False
    skip_bad: bool = False
    captions_per_image: int = 5
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.captions_per_image, bool) or not isinstance(self.captions_per_image, int):
            raise ConversionError(f"captions_per_image must be an integer, found {self.captions_per_image!r}")
        if self.captions_per_image < 1:
            raise ConversionError(f"captions_per_image must be at least 1, found {self.captions_per_image}")
        if self.entities_dir is not None:
            object.__setattr__(self, "entities_dir", Path(self.entities_dir))


def _finish_row(
    row: dict[str, Any],
    sources: ConversionOptions,
    image_size: tuple[int, int] | None,
    caption_list: Sequence[str],
) -> dict[str, Any]:
    """Add phrases (and the captions and size they imply) and the stored features to a row."""
    if sources.entities_dir is not None:
        captions, phrases, image_size = ground_with_entities(
            sources.entities_dir, row["image_id"], caption_list, image_size
        )
        row["captions"], row["phrases"] = captions, phrases
    else:
        row["captions"] = list(caption_list)
    if image_size is not None:
        row["image_size"] = list(image_size)
    row["features"] = _storage_features(row["features"], sources.float16, row["image_id"])
    return row


# ---------------------------------------------------------------------------------------------------------
# SCAN precomp
# ---------------------------------------------------------------------------------------------------------


def parse_split_mapping(specs: Sequence[str] | None, available: Sequence[str]) -> dict[str, str]:
    """`["train", "dev=validation", "testall=test"]` -> precomp split -> corpus split (default: every
    split present, under `PRECOMP_CORPUS_SPLIT`'s names)."""
    mapping: dict[str, str] = {}
    for spec in specs or available:
        source, _, target = spec.partition("=")
        if source not in PRECOMP_CORPUS_SPLIT:
            raise ConversionError(
                f"--split {spec!r}: unknown precomp split {source!r}; expected one of "
                f"{sorted(PRECOMP_CORPUS_SPLIT)}"
            )
        if source not in available:
            raise ConversionError(
                f"--split {spec!r}: the folder has no {source}_ims.npy (it has {list(available)})"
            )
        mapping[source] = target or PRECOMP_CORPUS_SPLIT[source]
    targets = list(mapping.values())
    repeated = {t for t in targets if targets.count(t) > 1}
    if repeated:
        raise ConversionError(f"--split: several precomp splits map to corpus split(s) {sorted(repeated)}")
    return mapping


def _align_with_karpathy(
    split: PrecompSplit,
    karpathy: dict[str, list[KarpathyImage]],
    by_id: dict[str, KarpathyImage],
    source: Path,
) -> list[KarpathyImage | str]:
    """The Karpathy image of each precomp image (by id when the split has ids, else by position in the
    split's Karpathy images), or a message saying why there is none. Captions are checked later."""
    if split.image_ids is not None:
        allowed = PRECOMP_KARPATHY_SPLITS[split.name]
        matched: list[KarpathyImage | str] = []
        for line, image_id in enumerate(split.image_ids, start=1):
            image = by_id.get(image_id)
            if image is None:
                matched.append(f"{split.ids_path}, line {line}: image id {image_id!r} is not in {source}")
            elif image.split not in allowed:
                matched.append(
                    f"{split.ids_path}, line {line}: image {image_id!r} is in Karpathy split {image.split!r}, "
                    f"but precomp split {split.name!r} holds images of {list(allowed)}"
                )
            else:
                matched.append(image)
        return matched
    candidates = [image for name in PRECOMP_KARPATHY_SPLITS[split.name] for image in karpathy[name]]
    if len(candidates) < split.n_images:
        raise ConversionError(
            f"{split.caps_path}: {split.n_images} images, but {source} has only {len(candidates)} in Karpathy "
            f"split(s) {list(PRECOMP_KARPATHY_SPLITS[split.name])}; give the split's ids with --ids"
        )
    return candidates[: split.n_images]


def _karpathy_captions(split: PrecompSplit, index: int, image: KarpathyImage, source: Path) -> list[str]:
    """The caption ids of precomp image `index`, after checking its captions are the Karpathy sentences."""
    cpi = split.captions_per_image
    if len(image.captions) < cpi:
        raise ValueError(
            f"image {image.image_id!r}: {source} has {len(image.captions)} sentences, expected >= {cpi}"
        )
    captions = split.captions[index * cpi : (index + 1) * cpi]
    mismatch = _caption_mismatch(captions, image.captions[:cpi])
    if mismatch is not None:
        raise ValueError(
            f"image {image.image_id!r}, caption {mismatch}: {split.caps_path} line {index * cpi + mismatch + 1} "
            f"has {captions[mismatch]!r}, {source} (sentid {image.caption_ids[mismatch]}) has "
            f"{image.captions[mismatch][:200]!r}: the files are not aligned"
        )
    return list(image.caption_ids[:cpi])


def convert_precomp(
    directory: str | Path,
    output: str | Path,
    splits: Sequence[str] | None = None,
    ids_path: str | Path | None = None,
    karpathy_path: str | Path | None = None,
    tsv_paths: Sequence[str | Path] = (),
    options: ConversionOptions | None = None,
) -> ConversionReport:
    """Convert a SCAN precomp folder into a corpus at `output` (see the module docstring)."""
    options = options or ConversionOptions()
    entities_dir, float16, skip_bad = options.entities_dir, options.float16, options.skip_bad
    captions_per_image, progress = options.captions_per_image, options.progress
    mapping = parse_split_mapping(splits, available_splits(directory))
    if not mapping:
        raise ConversionError(
            f"{directory}: no {{split}}_ims.npy file (expected e.g. train_ims.npy, test_ims.npy)"
        )
    if ids_path is not None and len(mapping) != 1:
        raise ConversionError("--ids gives the ids of one split: choose it with a single --split")
    opened = {name: open_precomp_split(directory, name, captions_per_image, ids_path) for name in mapping}
    report = ConversionReport(str(output))
    karpathy_file = None if karpathy_path is None else Path(karpathy_path)
    karpathy_images = [] if karpathy_file is None else read_karpathy(karpathy_file)
    by_id = {image.image_id: image for image in karpathy_images}
    grouped = images_by_split(karpathy_images)
    matches = {
        name: _align_with_karpathy(split, grouped, by_id, karpathy_file) if karpathy_file else None
        for name, split in opened.items()
    }
    ids = {name: _precomp_ids(split, matches[name]) for name, split in opened.items()}
    if (tsv_paths or entities_dir is not None) and any(i is None for i in ids.values()):
        raise ConversionError(
            "--boxes and --entities match images by id: give the ids (a {split}_ids.txt file, --ids or --karpathy)"
        )
    all_ids = {i for split_ids in ids.values() for i in split_ids or ()}
    if entities_dir is not None:
        check_entities_coverage(entities_dir, all_ids | set(by_id), report, skip_bad)
    boxes = index_tsv_boxes(tsv_paths, all_ids, report, progress) if tsv_paths else None
    sources = options
    writer = CorpusWriter(output)
    try:
        for name, split in opened.items():
            features = _output_features(
                split.feature_dim,
                float16=float16,
                boxes=boxes is not None,
                phrases=entities_dir is not None,
                caption_ids=karpathy_file is not None,
                sizes=boxes is not None or entities_dir is not None,
            )
            split_writer = writer.split(mapping[name], features)
            rows = _precomp_rows(
                split, matches[name], ids[name], boxes, sources, karpathy_file, report, progress
            )
            for row in rows:
                split_writer.add(row)
        writer.commit(report)
    except BaseException:
        writer.abort()
        raise
    return report


def _precomp_ids(split: PrecompSplit, matches: list[KarpathyImage | str] | None) -> list[str] | None:
    """The image id of each precomp image: its ids file's, else its Karpathy image's; None when unknown."""
    if split.image_ids is not None:
        return split.image_ids
    if matches is None:
        return None
    return [m.image_id for m in matches]  # positional matches are always images


def _precomp_rows(
    split: PrecompSplit,
    matches: list[KarpathyImage | str] | None,
    ids: list[str] | None,
    boxes: dict[str, _TsvBoxes | str] | None,
    sources: ConversionOptions,
    karpathy_file: Path | None,
    report: ConversionReport,
    progress: bool,
) -> Iterator[dict[str, Any]]:
    corpus_split = PRECOMP_CORPUS_SPLIT.get(split.name, split.name)
    bar = tqdm(
        split.images(),
        total=split.n_images,
        desc=f"converting {split.name}",
        unit=" images",
        disable=not progress,
    )
    for image in bar:
        image_id = ids[image.index] if ids is not None else f"{split.name}_{image.index}"
        try:
            if image.problem is not None:
                raise ValueError(image.problem)
            row: dict[str, Any] = {"image_id": image_id, "features": image.features}
            image_size = None
            if matches is not None:
                match = matches[image.index]
                if isinstance(match, str):
                    raise ValueError(match)
                row["caption_ids"] = _karpathy_captions(split, image.index, match, karpathy_file)
            if boxes is not None:
                entry = _merge_boxes(image_id, image.features, boxes.get(image_id))
                row["boxes"], image_size = entry.boxes, entry.image_size
            yield _finish_row(row, sources, image_size, image.captions)
        except ValueError as error:
            report.skip(corpus_split, image_id, str(error), sources.skip_bad)


# ---------------------------------------------------------------------------------------------------------
# Bottom-up-attention TSV + Karpathy
# ---------------------------------------------------------------------------------------------------------


def convert_butd_tsv(
    tsv_paths: Sequence[str | Path],
    karpathy_path: str | Path,
    output: str | Path,
    options: ConversionOptions | None = None,
) -> ConversionReport:
    """Convert bottom-up-attention TSVs + a Karpathy split file into a corpus at `output`.

    Splits come from the Karpathy file (`train` and `restval` -> train, `val` -> validation, `test` ->
    test); each image keeps its first `captions_per_image` sentences (COCO has up to 7), and their
    `sentid`s. Rows are written in TSV order, each to its split, as they are read.
    """
    options = options or ConversionOptions()
    entities_dir, skip_bad, progress = options.entities_dir, options.skip_bad, options.progress
    karpathy_file = Path(karpathy_path)
    images = {image.image_id: image for image in read_karpathy(karpathy_file)}
    report = ConversionReport(str(output))
    if entities_dir is not None:
        check_entities_coverage(entities_dir, set(images), report, skip_bad)
    sources = options
    writer = CorpusWriter(output)
    try:
        seen = _write_tsv_rows(read_tsv_rows(tsv_paths), images, writer, sources, report, progress)
        for image_id, image in images.items():
            if image_id not in seen:
                report.skip(
                    CORPUS_SPLIT_OF[image.split],
                    image_id,
                    f"image {image_id!r} ({image.filename}, Karpathy split {image.split!r}) has no row in the TSV files",
                    skip_bad,
                )
        writer.commit(report)
    except BaseException:
        writer.abort()
        raise
    return report


def _write_tsv_rows(
    rows: Iterable[TsvRow],
    images: dict[str, KarpathyImage],
    writer: CorpusWriter,
    sources: ConversionOptions,
    report: ConversionReport,
    progress: bool,
) -> dict[str, str]:
    """Write each TSV row of a Karpathy image to its split; returns image id -> where its row was."""
    seen: dict[str, str] = {}
    unused = 0
    extra_captions = 0
    cpi = sources.captions_per_image
    bar = tqdm(total=len(images), desc="converting TSV rows", unit=" images", disable=not progress)
    for row in rows:
        image = images.get(row.image_id)
        if image is None:
            unused += 1
            continue
        where = f"{row.path}, line {row.line}"
        split = CORPUS_SPLIT_OF[image.split]
        bar.update()
        try:
            if row.image_id in seen:
                raise ValueError(
                    f"{where}: image_id {row.image_id!r} appears again (first at {seen[row.image_id]})"
                )
            seen[row.image_id] = where
            if row.problem is not None:
                raise ValueError(row.problem)
            if len(image.captions) < cpi:
                raise ValueError(
                    f"image {image.image_id!r}: {len(image.captions)} sentences in the Karpathy file, expected >= {cpi}"
                )
            extra_captions += len(image.captions) - cpi
            out = {
                "image_id": row.image_id,
                "features": row.features,
                "boxes": row.boxes,
                "caption_ids": list(image.caption_ids[:cpi]),
            }
            out = _finish_row(out, sources, row.image_size, image.captions[:cpi])
        except ValueError as error:
            report.skip(split, row.image_id, str(error), sources.skip_bad)
            continue
        features = _output_features(
            row.features.shape[1],
            float16=sources.float16,
            boxes=True,
            phrases=sources.entities_dir is not None,
            caption_ids=True,
            sizes=True,
        )
        writer.split(split, features).add(out)
    bar.close()
    if unused:
        report.notes.append(f"{unused} TSV rows are for images not in the Karpathy file and were not used")
    if extra_captions:
        report.notes.append(
            f"{extra_captions} Karpathy sentences beyond the first {cpi} of their image were not used"
        )
    return seen
