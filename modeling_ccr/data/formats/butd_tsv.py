"""Read bottom-up-attention TSV files (Anderson et al., `tools/generate_tsv.py`), row by row.

Each line is one image, six tab-separated fields, no header:
`image_id, image_w, image_h, num_boxes, boxes, features`, where `boxes` and `features` are base64 of
raw float32 arrays: `(num_boxes, 4)` pixel boxes `(x1, y1, x2, y2)` in the image's frame and
`(num_boxes, feature_dim)` region features (2048 for the ResNet-101 detector). The features of one image
are ~400 KB of base64 at 36 regions; lines are read by the shared text rules (`data/text_files.py`) and
split at tabs (the files use no quoting). Extractions are often spread over several files (one per GPU); `read_tsv_rows` reads them
in order.

A row that cannot be used comes back with `problem` set rather than raising, so that the caller decides
between stopping and skipping (`--skip-bad`); every problem names the file, the line and the field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..schema import first_non_finite
from ..text_files import iter_lines

TSV_FIELDS: tuple[str, ...] = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
# Boxes are clipped to the image by the extractor (to w - 1, h - 1); one pixel of slack absorbs rounding
# and the edge convention, anything further out is a box from another image or a corrupt row.
BOX_SLACK_PIXELS = 1.0


class TsvFormatError(UserError, ValueError):
    """A TSV file that cannot be read at all (missing, unreadable); row problems are reported per row."""


@dataclasses.dataclass
class TsvRow:
    """One parsed row. `boxes`: `(num_boxes, 4)` float32; `features`: `(num_boxes, feature_dim)` float32;
    `image_size`: (width, height). When `problem` is set, the arrays may be None."""

    path: Path
    line: int
    image_id: str | None
    image_size: tuple[int, int] | None = None
    boxes: np.ndarray | None = None
    features: np.ndarray | None = None
    problem: str | None = None


def _decode(text: str, field: str, where: str) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{where}, field {field!r}: undecodable base64 ({error})") from None
    if len(data) % 4:
        raise ValueError(
            f"{where}, field {field!r}: {len(data)} bytes is not a whole number of float32 values"
        )
    return np.frombuffer(data, dtype=np.float32)


def _positive_int(text: str, field: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{where}, field {field!r}: expected an integer, found {text[:40]!r}") from None
    if value < 1:
        raise ValueError(f"{where}, field {field!r}: expected a positive integer, found {value}")
    return value


def _check_boxes(boxes: np.ndarray, width: int, height: int, where: str) -> None:
    x1, y1, x2, y2 = boxes.T
    inverted = np.flatnonzero((x2 < x1) | (y2 < y1))
    if len(inverted):
        box = int(inverted[0])
        raise ValueError(f"{where}, field 'boxes': box {box} {boxes[box].tolist()} has x2 < x1 or y2 < y1")
    outside = np.flatnonzero(
        (x1 < -BOX_SLACK_PIXELS)
        | (y1 < -BOX_SLACK_PIXELS)
        | (x2 > width + BOX_SLACK_PIXELS)
        | (y2 > height + BOX_SLACK_PIXELS)
    )
    if len(outside):
        box = int(outside[0])
        raise ValueError(
            f"{where}, field 'boxes': box {box} {boxes[box].tolist()} lies outside the {width} x {height} image"
        )


def _parse(fields: list[str], where: str, feature_dim: int | None) -> TsvRow:
    """A row's fields -> TsvRow (path and line filled in by the caller); raises ValueError naming the field."""
    if len(fields) != len(TSV_FIELDS):
        raise ValueError(
            f"{where}: {len(fields)} tab-separated fields, expected {len(TSV_FIELDS)} ({', '.join(TSV_FIELDS)})"
        )
    image_id = fields[0].strip()
    if not image_id:
        raise ValueError(f"{where}, field 'image_id': empty")
    where = f"{where} (image_id {image_id})"
    width, height, num_boxes = (_positive_int(fields[i], TSV_FIELDS[i], where) for i in (1, 2, 3))
    boxes = _decode(fields[4], "boxes", where)
    if len(boxes) != num_boxes * 4:
        raise ValueError(
            f"{where}, field 'boxes': {len(boxes)} float32 values, expected num_boxes x 4 = {num_boxes * 4}"
        )
    features = _decode(fields[5], "features", where)
    if len(features) == 0 or len(features) % num_boxes:
        raise ValueError(
            f"{where}, field 'features': {len(features)} float32 values is not num_boxes ({num_boxes}) "
            "x feature_dim"
        )
    if feature_dim is not None and len(features) != num_boxes * feature_dim:
        raise ValueError(
            f"{where}, field 'features': {len(features) // num_boxes}-d features, expected {feature_dim} "
            "like the rows before it"
        )
    boxes, features = boxes.reshape(num_boxes, 4), features.reshape(num_boxes, -1)
    for field, values in (("boxes", boxes), ("features", features)):
        found = first_non_finite(values)
        if found is not None:
            (region, column), value = found
            raise ValueError(
                f"{where}, field {field!r}: non-finite value {value} at box {region}, column {column}"
            )
    _check_boxes(boxes, width, height, where)
    return TsvRow(Path(), 0, image_id, (width, height), boxes, features)


def read_tsv_rows(paths: Sequence[str | Path], feature_dim: int | None = None) -> Iterator[TsvRow]:
    """Every row of the TSV files in order. `feature_dim` (when None: the first good row's) is what every
    row's features must have. Rows with a problem are yielded with `problem` set (and `image_id` when it
    could be read); a missing or unreadable file raises `TsvFormatError`."""
    for path in map(Path, paths):
        if not path.is_file():
            raise TsvFormatError(f"{path}: file not found (bottom-up-attention TSV)")
        # Lines by the shared text rules; generate_tsv.py ends every row with CR LF, so a last row without
        # a line ending is a file cut off mid-row and stops the conversion (it is not one bad row).
        for line in iter_lines(path, error=TsvFormatError, what="bottom-up-attention TSV"):
            if not line.text:
                continue  # a blank line (e.g. after the last row) holds no image
            fields = line.text.split("\t")  # no quoting in these files (QUOTE_NONE): a tab always separates
            try:
                row = _parse(fields, f"{path}, line {line.number}", feature_dim)
            except ValueError as error:
                image_id = fields[0].strip() or None
                yield TsvRow(path, line.number, image_id, problem=str(error))
                continue
            row.path, row.line = path, line.number
            feature_dim = row.features.shape[1]
            yield row
