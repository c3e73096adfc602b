"""Writers of the source formats the converters read, used by the tests and the scale benchmark.

Each writes the layout of the public releases byte for byte where it matters: SCAN precomp folders
(`{split}_ims.npy` via np.save, `{split}_caps.txt` one caption per line, `{split}_ids.txt`), bottom-up-
attention TSVs (six tab-separated fields, base64 of raw float32), Karpathy split JSON (with `tokens`),
and Flickr30k Entities (through the project's writer). `export_corpus` writes a whole corpus in all four.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from modeling_ccr.data.flickr30k_entities import write_entities_annotations

# corpus split -> (precomp split, Karpathy split)
SPLIT_NAMES = {"train": ("train", "train"), "validation": ("dev", "val"), "test": ("test", "test")}


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.float32).tobytes()).decode("ascii")


def tsv_line(image_id: str, width: int, height: int, boxes: np.ndarray, features: np.ndarray) -> str:
    fields = [str(image_id), str(width), str(height), str(len(boxes)), b64(boxes), b64(features)]
    return "\t".join(fields) + "\n"


def write_tsv(path: Path, rows: Sequence[tuple]) -> Path:
    """rows: (image_id, width, height, boxes (n, 4), features (n, d)) each, or a raw line string."""
    with path.open("w", newline="") as handle:
        for row in rows:
            handle.write(row if isinstance(row, str) else tsv_line(*row))
    return path


def write_precomp(
    directory: Path,
    split: str,
    features: np.ndarray,
    captions: Sequence[str],
    ids: Sequence[str] | None = None,
    per_caption: bool = False,
) -> None:
    """features: `(n_images, n_regions, dim)`; with `per_caption`, each image's row is written once per
    caption (SCAN's im_div layout)."""
    directory.mkdir(parents=True, exist_ok=True)
    if per_caption:
        features = np.repeat(features, len(captions) // len(features), axis=0)
    np.save(directory / f"{split}_ims.npy", features)
    (directory / f"{split}_caps.txt").write_text("".join(f"{c}\n" for c in captions))
    if ids is not None:
        (directory / f"{split}_ids.txt").write_text("".join(f"{i}\n" for i in ids))


def karpathy_entry(image_id: str, split: str, imgid: int, captions: Sequence[str], first_sentid: int) -> dict:
    sentids = list(range(first_sentid, first_sentid + len(captions)))
    return {
        "filename": f"{image_id}.jpg",
        "imgid": imgid,
        "split": split,
        "sentids": sentids,
        "sentences": [
            {"tokens": re.findall(r"\w+", c.lower()), "raw": c, "imgid": imgid, "sentid": s}
            for c, s in zip(captions, sentids, strict=True)
        ],
    }


def write_karpathy(path: Path, images: list[dict]) -> Path:
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


def export_corpus(corpus: datasets.DatasetDict, root: Path, tsv_files: int = 2) -> dict[str, Path]:
    """Write `corpus` (the built-in one, with boxes and phrases) as a precomp folder with ids, TSV files,
    a Karpathy JSON and a Flickr30k Entities folder. Returns their paths."""
    paths = {"precomp": root / "precomp", "karpathy": root / "dataset.json", "entities": root / "entities"}
    images, tsv_rows, sentid = [], [], 0
    for split, (precomp_split, karpathy_split) in SPLIT_NAMES.items():
        rows = corpus[split].with_format("numpy")
        ids = list(corpus[split]["image_id"])
        captions = [c for row in corpus[split]["captions"] for c in row]
        write_precomp(paths["precomp"], precomp_split, np.stack(list(rows["features"])), captions, ids)
        for index, image_id in enumerate(ids):
            image_captions = corpus[split][index]["captions"]
            images.append(karpathy_entry(image_id, karpathy_split, len(images), image_captions, sentid))
            sentid += len(image_captions)
            width, height = corpus[split][index]["image_size"]
            tsv_rows.append((image_id, width, height, rows[index]["boxes"], rows[index]["features"]))
        write_entities_annotations(corpus[split], paths["entities"])
    write_karpathy(paths["karpathy"], images)
    per_file = -(-len(tsv_rows) // tsv_files)
    paths["tsv"] = [
        write_tsv(root / f"features_{i}.tsv", tsv_rows[i * per_file : (i + 1) * per_file])
        for i in range(tsv_files)
    ]
    return paths
