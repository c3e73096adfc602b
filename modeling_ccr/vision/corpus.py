"""A region-feature corpus (the schema of `data/schema.py`) from a folder of images and a captions file.

Captions files (one of):
- Karpathy JSON (`dataset_flickr30k.json` style): `{"images": [{"filename", "split", "sentences":
  [{"raw"}, ...]}, ...]}`; split `val` becomes `validation`, `restval` becomes `train`.
- CSV with a header: columns `image` and `caption`, optional `split`; one row per caption.
- JSONL: one object per line with `image` and `caption` (a string) or `captions` (a list), optional `split`.
An image without a split goes to `train`. Images are found by file name under the images folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from ..data.schema import corpus_features, validate_corpus
from ..data.text_files import iter_lines, read_json
from ..errors import UserError
from .extractor import ImageRegions, RegionFeatureExtractor
from .processor import ImageReadError

SPLIT_NAMES = {
    "train": "train",
    "restval": "train",
    "val": "validation",
    "validation": "validation",
    "test": "test",
}
DEFAULT_SPLIT = "train"


class CaptionsError(UserError, ValueError):
    """A captions (or boxes) file that cannot be read; names the file, line or row, and the field."""


@dataclass
class CaptionedImage:
    filename: str
    split: str
    captions: list[str] = field(default_factory=list)


def _split_name(value: object, where: str) -> str:
    if value in (None, ""):
        return DEFAULT_SPLIT
    if value not in SPLIT_NAMES:
        raise CaptionsError(f"{where}: field 'split' must be one of {sorted(SPLIT_NAMES)}, found {value!r}")
    return SPLIT_NAMES[value]


def _add(images: dict[str, CaptionedImage], filename: object, split: str, captions: list, where: str) -> None:
    if not isinstance(filename, str) or not filename:
        raise CaptionsError(f"{where}: field 'image' must be a file name, found {filename!r}")
    for caption in captions:
        if not isinstance(caption, str) or not caption.strip():
            raise CaptionsError(f"{where}: a caption must be a non-empty string, found {caption!r}")
    entry = images.setdefault(filename, CaptionedImage(filename, split))
    if entry.split != split:
        raise CaptionsError(
            f"{where}: image {filename!r} is in split {split!r} here but {entry.split!r} before"
        )
    entry.captions.extend(captions)


def _read_karpathy(path: Path, payload: dict) -> dict[str, CaptionedImage]:
    images: dict[str, CaptionedImage] = {}
    if not isinstance(payload.get("images"), list):
        raise CaptionsError(f"{path}: a Karpathy JSON file needs an 'images' list at the top level")
    for i, item in enumerate(payload["images"]):
        where = f"{path}: images[{i}]"
        sentences = item.get("sentences") if isinstance(item, dict) else None
        if not isinstance(sentences, list) or not all(isinstance(s, dict) and "raw" in s for s in sentences):
            raise CaptionsError(
                f"{where}: expected 'sentences' as a list of {{'raw': caption}}, found {sentences!r}"
            )
        _add(
            images,
            item.get("filename"),
            _split_name(item.get("split"), where),
            [s["raw"] for s in sentences],
            where,
        )
    return images


def _read_csv(path: Path) -> dict[str, CaptionedImage]:
    images: dict[str, CaptionedImage] = {}
    # Every CSV writer ends each row with a line ending, so a last row without one is a file cut off
    # mid-row (its caption would be stored short): refused by the shared text rules.
    lines = iter_lines(path, error=CaptionsError, what="captions CSV")
    reader = csv.DictReader(line.text for line in lines)
    try:
        fieldnames = reader.fieldnames
        missing = {"image", "caption"} - set(fieldnames or [])
        if missing:
            raise CaptionsError(
                f"{path}, line 1: the CSV header needs columns 'image' and 'caption', found {fieldnames}"
            )
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            _add(images, row["image"], _split_name(row.get("split"), where), [row["caption"]], where)
    except csv.Error as err:
        raise CaptionsError(f"{path}, line {reader.line_num}: not a readable CSV row ({err})") from None
    return images


def _read_jsonl(path: Path) -> dict[str, CaptionedImage]:
    images: dict[str, CaptionedImage] = {}
    # A JSONL line cut off mid-way is not valid JSON, so the last line may lack its newline.
    for line in iter_lines(path, error=CaptionsError, final_newline=False, what="captions JSONL"):
        if not line.text.strip():
            continue
        where = f"{path}, line {line.number}"
        try:
            item = json.loads(line.text)
        except json.JSONDecodeError as err:
            raise CaptionsError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        except RecursionError:
            raise CaptionsError(f"{where}: JSON nested too deeply") from None
        if not isinstance(item, dict) or ("caption" in item) == ("captions" in item):
            raise CaptionsError(
                f"{where}: expected an object with 'image' and either 'caption' or 'captions'"
            )
        captions = [item["caption"]] if "caption" in item else item["captions"]
        if not isinstance(captions, list):
            raise CaptionsError(f"{where}: field 'captions' must be a list of strings, found {captions!r}")
        _add(images, item.get("image"), _split_name(item.get("split"), where), captions, where)
    return images


def read_captions(path: str | Path) -> list[CaptionedImage]:
    """The images of a captions file (Karpathy JSON, CSV or JSONL, told apart by the suffix), in file order.

    Text rules of `data/text_files.py` (byte-order mark dropped, LF / CR LF / CR line endings, a
    non-UTF-8 byte named by line); every error names the file and the line (JSON: the entry)."""
    path = Path(path)
    if not path.is_file():
        raise CaptionsError(f"{path}: captions file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        payload = read_json(path, error=CaptionsError, what="captions file")
        images = _read_karpathy(path, payload if isinstance(payload, dict) else {})
    elif suffix == ".csv":
        images = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        images = _read_jsonl(path)
    else:
        raise CaptionsError(
            f"{path}: expected a .json (Karpathy), .csv or .jsonl captions file, found {suffix!r}"
        )
    if not images:
        raise CaptionsError(f"{path}: no captions found")
    return list(images.values())


def read_boxes(path: str | Path) -> dict[str, np.ndarray]:
    """A JSON file `{image file name: [[x1, y1, x2, y2], ...]}` of boxes in original pixels, read by the
    text rules of `data/text_files.py` (as the captions files are: a byte-order mark is dropped, a
    non-UTF-8 byte or a file cut mid-way is named by line)."""
    path = Path(path)
    if not path.is_file():
        raise CaptionsError(f"{path}: boxes file not found")
    payload = read_json(path, error=CaptionsError, what="boxes file")
    if not isinstance(payload, dict):
        raise CaptionsError(f"{path}: expected an object mapping image file names to box lists")
    boxes = {}
    for name, value in payload.items():
        try:
            boxes[name] = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise CaptionsError(
                f"{path}: boxes of {name!r} are not a list of 4 numbers each ({err})"
            ) from err
    return boxes


def check_captioned_images(
    images_dir: Path, captioned: list[CaptionedImage], boxes: dict[str, np.ndarray] | None
) -> None:
    """Refuse a missing images folder, boxes for images without captions, and captions entries whose
    image lies outside the images folder (an absolute path or `..`), before any image is read."""
    if not images_dir.is_dir():
        raise CaptionsError(f"{images_dir}: images folder not found")
    if boxes:
        unknown = sorted(set(boxes) - {c.filename for c in captioned})
        if unknown:
            raise CaptionsError(f"boxes given for image(s) with no captions: {unknown[:5]}")
    root = images_dir.resolve()
    for c in captioned:
        resolved = (images_dir / c.filename).resolve()
        if Path(c.filename).is_absolute() or not resolved.is_relative_to(root):
            raise CaptionsError(
                f"captions entry {c.filename!r}: expected an image inside {images_dir}, found a path "
                f"outside it ({resolved})"
            )


@dataclass
class ExtractionReport:
    """What `extract_corpus` did: images per split, files skipped (with why), images without captions."""

    images_per_split: dict[str, int]
    skipped: list[str]
    uncaptioned: list[str]


def extract_corpus(
    images_dir: str | Path,
    captioned: list[CaptionedImage],
    extractor: RegionFeatureExtractor,
    boxes: dict[str, np.ndarray] | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> tuple[datasets.DatasetDict, ExtractionReport]:
    """Extract every captioned image's regions and build one split per caption split (validated)."""
    images_dir = Path(images_dir)
    check_captioned_images(images_dir, captioned, boxes)
    by_name = {c.filename: c for c in captioned}
    rows: dict[str, list[dict]] = {}
    skipped = []
    paths = [images_dir / c.filename for c in captioned]
    path_boxes = None if boxes is None else {str(images_dir / name): b for name, b in boxes.items()}
    for path, regions in extractor.extract(paths, path_boxes, skip_bad=skip_bad, progress=progress):
        if isinstance(regions, ImageReadError):
            skipped.append(str(regions))
            continue
        entry = by_name[path.relative_to(images_dir).as_posix()]
        rows.setdefault(entry.split, []).append(_row(entry, regions))
    if not rows:
        raise CaptionsError(f"{images_dir}: no image could be read ({len(skipped)} skipped)")
    features = corpus_features(extractor.feature_dim, with_phrases=False)
    corpus = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(split_rows, features=features)
            for split, split_rows in rows.items()
        }
    )
    for split, dataset in corpus.items():
        validate_corpus(dataset, split, expected_feature_dim=extractor.feature_dim)
    captioned_names = set(by_name)
    uncaptioned = sorted(
        p.relative_to(images_dir).as_posix()
        for p in images_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
        and p.relative_to(images_dir).as_posix() not in captioned_names
    )  # fmt: skip
    report = ExtractionReport({s: len(r) for s, r in rows.items()}, skipped, uncaptioned)
    return corpus, report


def _row(entry: CaptionedImage, regions: ImageRegions) -> dict:
    return {
        "image_id": entry.filename,
        "features": regions.features,
        "boxes": regions.boxes,
        "image_size": list(regions.image_size),
        "captions": entry.captions,
    }
