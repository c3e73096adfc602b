"""An image corpus (`data/schema.image_corpus_features`) from a folder of images and a captions file.

The captions file is read as `ccr extract` reads it (`corpus.read_captions`: Karpathy JSON, CSV or JSONL);
each captioned image is decoded once to check it and take its displayed size (EXIF orientation applied,
`read_image`), and its file bytes are stored unchanged, so decoding in training sees exactly the file.
Optional boxes (`corpus.read_boxes`, in the displayed image's pixels) become the `boxes` column a tower
with "boxes" regions pools.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np

from ..data.schema import image_corpus_features, validate_corpus
from .corpus import CaptionedImage, CaptionsError, ExtractionReport, check_captioned_images
from .extractor import check_boxes
from .processor import ImageReadError, read_image


def build_image_corpus(
    images_dir: str | Path,
    captioned: list[CaptionedImage],
    boxes: dict[str, np.ndarray] | None = None,
    skip_bad: bool = False,
) -> tuple[datasets.DatasetDict, ExtractionReport]:
    """One split per caption split, rows in captions-file order, validated. An unreadable image stops
    the conversion (one line naming it), or with `skip_bad` is left out and listed in the report."""
    images_dir = Path(images_dir)
    check_captioned_images(images_dir, captioned, boxes)
    rows: dict[str, list[dict]] = {}
    skipped = []
    for entry in captioned:
        path = images_dir / entry.filename
        try:
            image = read_image(path)
        except ImageReadError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            continue
        row = {
            "image_id": entry.filename,  # as `ccr extract` names its rows
            "image": {"bytes": path.read_bytes(), "path": None},
            "image_size": list(image.size),
            "captions": entry.captions,
        }
        if boxes is not None:
            given = boxes.get(entry.filename)
            if given is None:
                raise CaptionsError(
                    f"boxes file: no boxes for {entry.filename!r} (every image needs its boxes)"
                )
            row["boxes"] = check_boxes(given, image.size, f"boxes of {entry.filename}").numpy()
        rows.setdefault(entry.split, []).append(row)
    if not rows:
        raise CaptionsError(f"{images_dir}: no image could be read ({len(skipped)} skipped)")
    features = image_corpus_features(with_boxes=boxes is not None)
    corpus = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(split_rows, features=features)
            for split, split_rows in rows.items()
        }
    )
    for split, dataset in corpus.items():
        validate_corpus(dataset, split)
    report = ExtractionReport({split: len(r) for split, r in rows.items()}, skipped, [])
    return corpus, report
