"""Read Karpathy split files (`dataset_flickr30k.json`, `dataset_coco.json`).

Layout (Karpathy's "deep image-sentence" release): a JSON object whose `images` list holds one entry per
image:

- `split`: "train", "val", "test" or "restval" (COCO: 30k val2014 images used for training);
- `filename`: e.g. "1000092795.jpg" (Flickr30K) or "COCO_val2014_000000391895.jpg" (COCO);
- `imgid`: the image's position in the file; `cocoid` (COCO only): the COCO image id;
- `sentids`: the ids of its sentences; `sentences`: a list of `{raw, tokens, imgid, sentid}`, `raw` the
  caption as written, `tokens` Karpathy's lower-cased, punctuation-free split of it.

The image id used everywhere else in the project (precomp `{split}_ids.txt`, bottom-up-attention TSV
`image_id`, Flickr30k Entities file names) is the COCO id for COCO and the file name's stem for
Flickr30K, so that is the `image_id` this reader returns. Caption ids are the `sentid`s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ...errors import UserError
from ..text_files import read_json

KARPATHY_SPLITS: tuple[str, ...] = ("train", "val", "test", "restval")
# Karpathy split -> corpus split. `restval` trains, as in SCAN and VSE++ (113,287 COCO training images).
CORPUS_SPLIT_OF: dict[str, str] = {"train": "train", "restval": "train", "val": "validation", "test": "test"}


class KarpathyFormatError(UserError, ValueError):
    """A Karpathy split file that cannot be read; the message names the file, the image and the field."""


@dataclasses.dataclass(frozen=True)
class KarpathyImage:
    """One image of a Karpathy split file.

    `image_id`: the COCO id (COCO) or the file name's stem (Flickr30K); `split`: the Karpathy split;
    `captions`: the `raw` sentences in file order; `caption_ids`: their `sentid`s as strings.
    """

    image_id: str
    split: str
    filename: str
    captions: tuple[str, ...]
    caption_ids: tuple[str, ...]


def _drop_tokens(entry: dict[str, Any]) -> dict[str, Any]:
    # `tokens` are most of the file's objects (COCO: ~7M strings) and are never used: dropping them as
    # each sentence is parsed keeps the peak memory of reading dataset_coco.json to a few hundred MB.
    entry.pop("tokens", None)
    return entry


def _field(entry: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in entry:
        raise KarpathyFormatError(f"{where}: missing field {name!r}; found fields {sorted(entry)}")
    value = entry[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise KarpathyFormatError(f"{where}: field {name!r} must be {expected}, found {value!r}")
    return value


def _image(entry: Any, index: int, path: Path) -> KarpathyImage:
    where = f"{path}: images[{index}]"
    if not isinstance(entry, dict):
        raise KarpathyFormatError(f"{where}: expected an object, found {type(entry).__name__}")
    filename = _field(entry, "filename", str, where)
    where = f"{where} (filename {filename!r})"
    split = _field(entry, "split", str, where)
    if split not in KARPATHY_SPLITS:
        raise KarpathyFormatError(f"{where}: field 'split' must be one of {KARPATHY_SPLITS}, found {split!r}")
    image_id = str(_field(entry, "cocoid", int, where)) if "cocoid" in entry else Path(filename).stem
    sentences = _field(entry, "sentences", list, where)
    captions, caption_ids = [], []
    for number, sentence in enumerate(sentences):
        sentence_where = f"{where}, sentences[{number}]"
        if not isinstance(sentence, dict):
            raise KarpathyFormatError(f"{sentence_where}: expected an object, found {sentence!r}")
        captions.append(_field(sentence, "raw", str, sentence_where))
        caption_ids.append(str(_field(sentence, "sentid", int, sentence_where)))
    return KarpathyImage(image_id, split, filename, tuple(captions), tuple(caption_ids))


def read_karpathy(path: str | Path) -> list[KarpathyImage]:
    """Every image of a Karpathy split file, in file order; raises `KarpathyFormatError` on a missing or
    ill-typed field (naming the file, the image's index and file name, and the field), a repeated image
    id, file name or `sentid`, invalid JSON (naming the line) or a non-UTF-8 byte. A leading byte-order
    mark is dropped (`data/text_files.py`)."""
    path = Path(path)
    raw = read_json(path, error=KarpathyFormatError, what="Karpathy split file", object_hook=_drop_tokens)
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise KarpathyFormatError(
            f"{path}: expected a JSON object with an 'images' list (Karpathy split file)"
        )
    images = [_image(entry, index, path) for index, entry in enumerate(raw["images"])]
    _check_unique(images, path)
    return images


def _check_unique(images: list[KarpathyImage], path: Path) -> None:
    """Image ids, file names and sentence ids are unique in the file: the release numbers every sentence
    once (`sentid`), and caption ids are how the corpus refers back to it."""
    seen_ids: dict[str, int] = {}
    seen_files: dict[str, int] = {}
    seen_sentids: dict[str, int] = {}
    for index, image in enumerate(images):
        if image.image_id in seen_ids:
            raise KarpathyFormatError(
                f"{path}: images[{index}] repeats image id {image.image_id!r} of images[{seen_ids[image.image_id]}]"
            )
        seen_ids[image.image_id] = index
        if image.filename in seen_files:
            raise KarpathyFormatError(
                f"{path}: images[{index}] repeats filename {image.filename!r} of images[{seen_files[image.filename]}]"
            )
        seen_files[image.filename] = index
        for number, sentid in enumerate(image.caption_ids):
            if sentid in seen_sentids:
                first = seen_sentids[sentid]
                owner = (
                    "the same image"
                    if first == index
                    else f"images[{first}] (image id {images[first].image_id!r})"
                )
                raise KarpathyFormatError(
                    f"{path}: images[{index}] (image id {image.image_id!r}), sentences[{number}]: sentid {sentid} "
                    f"is already used by {owner}; sentence ids are unique in a Karpathy file"
                )
            seen_sentids[sentid] = index


def images_by_split(images: list[KarpathyImage]) -> dict[str, list[KarpathyImage]]:
    """Karpathy split name -> its images in file order (the order SCAN's precomp files follow)."""
    grouped: dict[str, list[KarpathyImage]] = {split: [] for split in KARPATHY_SPLITS}
    for image in images:
        grouped[image.split].append(image)
    return grouped
