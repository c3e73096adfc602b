"""Read and write Flickr30k Entities annotations (`Sentences/<id>.txt`, `Annotations/<id>.xml`).

One reader serves the real Flickr30k Entities release and the built-in corpus, which exports its phrases
in the same format (`write_entities_annotations`).

Sentences (`Sentences/<image id>.txt`): one caption per line (blank lines are skipped), phrases marked
`[/EN#<entity id>/<type>[/<type>...] words ...]`, e.g. `[/EN#6729/vehicles/scene the subway]`. Entity
id 0 with type `notvisual` names nothing in the image and has no box. A phrase becomes the struct of
`modeling_ccr.data.schema.phrase_feature()`: `phrase_type` is the types joined by "/", and
`first_word`/`num_words` index into `split_words(caption)` (punctuation is a word of its own, so the
span is computed with `split_words`, never by whitespace). The caption is the line with the markup
removed and its words joined by single spaces. Real entity ids are integers; the reader also accepts
letters, `_` and `-` so that the built-in corpus's `scene-<context>` ids survive a round trip.

Annotations (`Annotations/<image id>.xml`), Pascal-VOC-like: `size` (`width`, `height`, `depth`), then
`object` elements, each with one or more `name` (the entity ids sharing that box) and either a `bndbox`
(`xmin`, `ymin`, `xmax`, `ymax`) or the integer flags `nobndbox` / `scene`. An entity may own several
objects; its ground truth is the union of their boxes.

Box convention: the XML holds 1-based inclusive integer pixel coordinates; this library uses 0-based
float pixel edges `(x1, y1, x2, y2)` (the bottom-up-attention convention, width `x2 - x1`). A box
covering 1-based pixels `xmin..xmax` covers 0-based pixels `xmin-1..xmax-1`, whose edges are
`xmin-1` and `xmax`: so `(x1, y1, x2, y2) = (xmin - 1, ymin - 1, xmax, ymax)`, and the writer inverts
it as `xmin = round(x1) + 1`, `xmax = round(x2)` (at most 0.5 px off per coordinate).

A phrase's `boxes` are every `bndbox` of its entity, whatever its flags. In the real release
`nobndbox`, `scene` and `notvisual` entities have no `bndbox`, hence no boxes; the built-in corpus's
`scene` phrases do have boxes (its context regions) and keep them. The attention metrics skip boxless,
`scene` and `notvisual` phrases by themselves.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets

from ..errors import UserError
from ..text.tokenization import split_words
from .schema import phrase_feature
from .text_files import iter_lines, read_text

Box = list[float]  # (x1, y1, x2, y2) 0-based float pixel edges

SENTENCES_DIR = "Sentences"
ANNOTATIONS_DIR = "Annotations"
NOTVISUAL_TYPE = "notvisual"
SCENE_TYPE = "scene"
FLAGS: tuple[str, ...] = ("nobndbox", "scene")

# `/EN#<id>/<type>[/<type>...]`: the token right after "[". Types may hold any character but "/",
# whitespace and brackets; ids are integers in the release, letters/`_`/`-` are allowed (module docstring).
_ENTITY_ID_PATTERN = r"[A-Za-z0-9_-]+"
_TYPE_PATTERN = r"[^/\s\[\]]+"
_HEADER = re.compile(rf"/EN#(?P<entity_id>{_ENTITY_ID_PATTERN})(?P<types>(?:/{_TYPE_PATTERN})+)")
_ENTITY_ID = re.compile(_ENTITY_ID_PATTERN)
_TYPE = re.compile(_TYPE_PATTERN)
# The `split_words` rule, run on the original caption to find each word's character offsets.
_WORD = re.compile(r"\w+|[^\w\s]")


class EntitiesFormatError(UserError, ValueError):
    """A Flickr30k Entities file is missing or malformed; the message names the file and line/element."""


# ---------------------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------------------


def _where(source: str | Path | None, line_number: int | None) -> str:
    if source is None:
        return "" if line_number is None else f"line {line_number}: "
    return f"{source}: " if line_number is None else f"{source}, line {line_number}: "


def _parse_header(header: str, where: str) -> tuple[str, str]:
    """`/EN#123/people/scene` -> ("123", "people/scene")."""
    match = _HEADER.fullmatch(header)
    if match is None:
        raise EntitiesFormatError(
            f"{where}bad phrase header {header!r}: expected '/EN#<entity id>/<type>[/<type>...]' followed "
            "by a space and the phrase's words"
        )
    return match["entity_id"], match["types"][1:]


def _phrase_span(
    prefix: str, phrase: str, caption_words: list[str], header: str, where: str
) -> tuple[int, int]:
    """(first_word, num_words) of `phrase` in `split_words(caption)`, `prefix` being the caption before it."""
    first = len(split_words(prefix))
    words = split_words(phrase)
    if not words:
        raise EntitiesFormatError(f"{where}phrase [{header} ...] has no words")
    # The split of the prefix and the phrase alone equals the caption's split unless a bracket cuts a word
    # in two (e.g. "[/EN#1/animals dog]s"): then no span of the caption's words is the phrase.
    if caption_words[first : first + len(words)] != words:
        raise EntitiesFormatError(
            f"{where}phrase {phrase!r} ([{header} ...]) does not start and end on word boundaries of the caption"
        )
    return first, len(words)


def _scan_markup(line: str, where: str) -> tuple[str, list[tuple[str, str, str, int, int]]]:
    """Strip the markup -> (plain text, [(header, entity id, types, start, end)] offsets into the plain text)."""
    plain: list[str] = []
    length = 0  # len("".join(plain)), kept incrementally
    phrases: list[tuple[str, str, str, int, int]] = []
    open_phrase: tuple[str, str, str, int] | None = None
    position = 0
    while position < len(line):
        char = line[position]
        if char == "[":
            if open_phrase is not None:
                raise EntitiesFormatError(
                    f"{where}unbalanced brackets: '[' at column {position + 1} opens a phrase inside "
                    f"phrase [{open_phrase[0]} ...]"
                )
            bracket_column = position + 1  # 1-based, for messages
            header = re.match(r"[^\s\]]*", line[position + 1 :])[0]
            entity_id, types = _parse_header(header, where)
            position += 1 + len(header)
            if position >= len(line) or not line[position].isspace():
                raise EntitiesFormatError(
                    f"{where}phrase header [{header} at column {bracket_column} is not followed by "
                    "a space and the phrase's words"
                )
            open_phrase = (header, entity_id, types, length)
            position += 1  # the space after the header is markup, not caption text
        elif char == "]":
            if open_phrase is None:
                raise EntitiesFormatError(
                    f"{where}unbalanced brackets: ']' at column {position + 1} closes no phrase"
                )
            phrases.append((*open_phrase, length))
            open_phrase = None
            position += 1
        else:
            plain.append(char)
            length += 1
            position += 1
    if open_phrase is not None:
        raise EntitiesFormatError(
            f"{where}unbalanced brackets: phrase [{open_phrase[0]} ...] is never closed"
        )
    return "".join(plain), phrases


def parse_sentence_line(
    line: str, source: str | Path | None = None, line_number: int | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Parse one annotated caption line -> (plain caption, phrases in order of appearance).

    Each phrase is `{entity_id, phrase, phrase_type, first_word, num_words}` (no `boxes`: those come from
    the XML); the span indexes into `split_words(caption)`. `source` and `line_number` only make error
    messages name the file and line. Raises `EntitiesFormatError` on unbalanced or nested brackets, a bad
    `/EN#` header, a phrase without words or a bracket that cuts a word in two.
    """
    where = _where(source, line_number)
    plain, marks = _scan_markup(line.rstrip("\r\n"), where)
    caption = " ".join(plain.split())
    # Whitespace never changes `split_words`, so spans computed on the plain text hold for the caption.
    caption_words = split_words(caption)
    phrases = []
    for header, entity_id, types, start, end in marks:
        text = plain[start:end]
        first_word, num_words = _phrase_span(plain[:start], text, caption_words, header, where)
        phrases.append(
            {
                "entity_id": entity_id,
                "phrase": " ".join(text.split()),
                "phrase_type": types,
                "first_word": first_word,
                "num_words": num_words,
            }
        )
    return caption, phrases


def parse_sentences(path: str | Path) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Parse a `Sentences/<id>.txt` file -> (captions, phrases per caption); blank lines are skipped.

    Read by the shared text rules (`data/text_files.py`): a byte-order mark is dropped before the spans
    are computed (it would otherwise be a word of its own and shift every span of the first caption),
    LF / CR LF / CR all end a line, and a non-UTF-8 byte names its line. The last line may lack its
    newline: a line cut inside a phrase is refused (an unclosed bracket), and one cut between phrases is
    caught where the converters compare each sentence with the corpus caption.
    """
    path = Path(path)
    captions: list[str] = []
    phrases_per_caption: list[list[dict[str, Any]]] = []
    lines = iter_lines(path, error=EntitiesFormatError, final_newline=False, what="Entities sentences file")
    for line in lines:
        if not line.text.strip():
            continue
        caption, phrases = parse_sentence_line(line.text, path, line.number)
        captions.append(caption)
        phrases_per_caption.append(phrases)
    return captions, phrases_per_caption


# ---------------------------------------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------------------------------------


def _integer(parent: ET.Element, tag: str, path: Path, parent_path: str) -> int:
    """The integer text of `parent`'s child `tag`; raises naming the file and element."""
    child = parent.find(tag)
    element = f"<{parent_path}/{tag}>"
    if child is None:
        raise EntitiesFormatError(f"{path}: element {element} is missing")
    text = (child.text or "").strip()
    try:
        return int(text)
    except ValueError:
        raise EntitiesFormatError(f"{path}: element {element} must be an integer, found {text!r}") from None


def _parse_size(root: ET.Element, path: Path) -> tuple[int, int]:
    size = root.find("size")
    if size is None:
        raise EntitiesFormatError(f"{path}: element <annotation/size> is missing")
    width = _integer(size, "width", path, "annotation/size")
    height = _integer(size, "height", path, "annotation/size")
    if width < 1 or height < 1:
        raise EntitiesFormatError(
            f"{path}: element <annotation/size> must be positive, found {width}x{height}"
        )
    return width, height


def _parse_bndbox(bndbox: ET.Element, path: Path, element: str) -> Box:
    """1-based inclusive integer pixels -> 0-based float edges `(xmin - 1, ymin - 1, xmax, ymax)`."""
    xmin, ymin, xmax, ymax = (
        _integer(bndbox, tag, path, element) for tag in ("xmin", "ymin", "xmax", "ymax")
    )
    if xmax < xmin or ymax < ymin:
        raise EntitiesFormatError(
            f"{path}: element <{element}> has xmax < xmin or ymax < ymin: "
            f"(xmin, ymin, xmax, ymax) = ({xmin}, {ymin}, {xmax}, {ymax})"
        )
    return [float(xmin - 1), float(ymin - 1), float(xmax), float(ymax)]


def parse_annotation(
    path: str | Path,
) -> tuple[tuple[int, int], dict[str, list[Box]], dict[str, frozenset[str]]]:
    """Parse an `Annotations/<id>.xml` file -> (image_size, boxes_by_entity, flags_by_entity).

    `image_size` is `(width, height)`; `boxes_by_entity[entity_id]` lists the entity's boxes as 0-based
    float `(x1, y1, x2, y2)` in file order (see the module docstring for the conversion);
    `flags_by_entity[entity_id]` holds the flags ("nobndbox", "scene") set to a positive integer on any of
    its objects. Raises `EntitiesFormatError` naming the file and the element (or the parser's line).
    """
    path = Path(path)
    try:
        root = ET.fromstring(read_text(path, error=EntitiesFormatError, what="Entities annotation file"))
    except ET.ParseError as error:
        line, column = error.position
        raise EntitiesFormatError(
            f"{path}, line {line}, column {column + 1}: unreadable XML ({error})"
        ) from None
    image_size = _parse_size(root, path)
    boxes: dict[str, list[Box]] = {}
    flags: dict[str, set[str]] = {}
    for index, obj in enumerate(root.findall("object")):
        element = f"annotation/object[{index + 1}]"  # XPath-style, 1-based
        names = [(name.text or "").strip() for name in obj.findall("name")]
        if not names or not all(names):
            raise EntitiesFormatError(f"{path}: element <{element}> needs one or more non-empty <name>")
        bndbox = obj.find("bndbox")
        box = None if bndbox is None else _parse_bndbox(bndbox, path, f"{element}/bndbox")
        object_flags = {
            flag for flag in FLAGS if obj.find(flag) is not None and _integer(obj, flag, path, element) > 0
        }
        if box is None and not any(obj.find(flag) is not None for flag in FLAGS):
            raise EntitiesFormatError(
                f"{path}: element <{element}> has neither <bndbox> nor <nobndbox>/<scene>"
            )
        for name in names:
            if box is not None:
                boxes.setdefault(name, []).append(box)
            if object_flags:
                flags.setdefault(name, set()).update(object_flags)
    return image_size, boxes, {name: frozenset(f) for name, f in flags.items()}


# ---------------------------------------------------------------------------------------------------------
# One image, and a whole split
# ---------------------------------------------------------------------------------------------------------


def _check_image_id(image_id: str) -> None:
    """Image ids become file names: refuse anything that would leave the Sentences/Annotations folders."""
    if not image_id or image_id in (".", "..") or "/" in image_id or "\\" in image_id:
        raise ValueError(f"image_id {image_id!r} cannot be a file name under Sentences/ and Annotations/")


def sentences_path(root: str | Path, image_id: str) -> Path:
    """`root/Sentences/<image_id>.txt`."""
    _check_image_id(image_id)
    return Path(root) / SENTENCES_DIR / f"{image_id}.txt"


def annotation_path(root: str | Path, image_id: str) -> Path:
    """`root/Annotations/<image_id>.xml`."""
    _check_image_id(image_id)
    return Path(root) / ANNOTATIONS_DIR / f"{image_id}.xml"


def read_image_entities(
    root: str | Path, image_id: str
) -> tuple[tuple[int, int], list[str], list[list[dict[str, Any]]]]:
    """Read one image -> (image_size, captions, phrases per caption), phrases in the schema's struct.

    Each phrase's `boxes` are all boxes of its entity (their union is its ground truth); an entity
    without a `bndbox` (nobndbox, scene or notvisual in the release) gets `[]`.
    """
    image_size, boxes_by_entity, _ = parse_annotation(annotation_path(root, image_id))
    captions, phrases_per_caption = parse_sentences(sentences_path(root, image_id))
    for phrases in phrases_per_caption:
        for phrase in phrases:
            phrase["boxes"] = [list(box) for box in boxes_by_entity.get(phrase["entity_id"], [])]
    return image_size, captions, phrases_per_caption


def _column(dataset: datasets.Dataset, name: str) -> list:
    return dataset.with_format("arrow", columns=[name])[:].column(name).to_pylist()


def _check_captions_match(
    image_id: str, row_captions: Sequence[str], file_captions: Sequence[str], root: str | Path
) -> None:
    if len(row_captions) != len(file_captions):
        raise ValueError(
            f"image_id {image_id!r}: the dataset has {len(row_captions)} captions, "
            f"{sentences_path(root, image_id)} has {len(file_captions)}"
        )
    for index, (ours, theirs) in enumerate(zip(row_captions, file_captions, strict=True)):
        if split_words(ours) != split_words(theirs):
            raise ValueError(
                f"image_id {image_id!r}, caption {index}: the dataset has {ours!r}, "
                f"{sentences_path(root, image_id)} has {theirs!r} (compared as split_words)"
            )


def attach_entities(dataset: datasets.Dataset, root: str | Path) -> datasets.Dataset:
    """Set the `captions` and `phrases` columns of `dataset` from `root/Sentences` and `root/Annotations`.

    Rows are matched by `image_id`. When the dataset already has `captions`, the files must hold the same
    captions in the same order, compared as `split_words` word lists (the unit the spans index into, so
    case and spacing may differ); the dataset's own caption strings are then kept. When the dataset has
    `image_size` it must equal the XML `size` (the boxes are in that frame); when it has none, the column
    is added. Only `image_id`, `captions` and `image_size` are read, never the features.
    """
    image_ids = _column(dataset, "image_id")
    row_captions = _column(dataset, "captions") if "captions" in dataset.column_names else None
    row_sizes = _column(dataset, "image_size") if "image_size" in dataset.column_names else None
    captions_column: list[list[str]] = []
    phrases_column: list[list[list[dict[str, Any]]]] = []
    sizes_column: list[list[int]] = []
    for row, image_id in enumerate(image_ids):
        image_size, captions, phrases = read_image_entities(root, image_id)
        if row_captions is not None and row_captions[row] is not None:
            _check_captions_match(image_id, row_captions[row], captions, root)
            captions = list(row_captions[row])
        if row_sizes is not None and row_sizes[row] is not None and tuple(row_sizes[row]) != image_size:
            raise ValueError(
                f"image_id {image_id!r}: the dataset's image_size is {tuple(row_sizes[row])}, "
                f"{annotation_path(root, image_id)} says {image_size} (width, height)"
            )
        captions_column.append(captions)
        phrases_column.append(phrases)
        sizes_column.append(list(image_size))
    return _replace_columns(dataset, captions_column, phrases_column, sizes_column)


def _replace_columns(
    dataset: datasets.Dataset,
    captions: list[list[str]],
    phrases: list[list[list[dict[str, Any]]]],
    sizes: list[list[int]],
) -> datasets.Dataset:
    """Swap in the new columns, keeping the original column order (new ones go last)."""
    order = list(dataset.column_names)
    for name in ("image_size", "captions", "phrases"):
        if name not in order:
            order.append(name)
    if "image_size" not in dataset.column_names:
        dataset = dataset.add_column(
            "image_size", sizes, feature=datasets.List(datasets.Value("int32"), length=2)
        )
    dataset = dataset.remove_columns([c for c in ("captions", "phrases") if c in dataset.column_names])
    dataset = dataset.add_column("captions", captions, feature=datasets.List(datasets.Value("string")))
    dataset = dataset.add_column("phrases", phrases, feature=datasets.List(datasets.List(phrase_feature())))
    return dataset.select_columns(order)


# ---------------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------------


def _word_offsets(caption: str, image_id: str, index: int) -> list[tuple[int, int]]:
    """Character (start, end) of each word of `split_words(caption)` in `caption`."""
    matches = list(_WORD.finditer(caption))
    # Lower-casing can change a word's characters (e.g. "\u0130" -> "i\u0307"); then offsets in the
    # original string no longer line up with split_words, and the phrase cannot be placed safely.
    if [m[0].lower() for m in matches] != split_words(caption):
        raise ValueError(
            f"image_id {image_id!r}, caption {index}: {caption!r} splits differently once lower-cased; "
            "cannot place the phrase markup"
        )
    return [m.span() for m in matches]


def _check_writable(image_id: str, index: int, caption: str, phrase: dict[str, Any]) -> None:
    where = f"image_id {image_id!r}, caption {index}"
    if any(c in caption for c in "[]\n\r"):
        raise ValueError(
            f"{where}: {caption!r} contains a bracket or line break, which the format cannot hold"
        )
    if not _ENTITY_ID.fullmatch(str(phrase["entity_id"])):
        raise ValueError(
            f"{where}: entity_id {phrase['entity_id']!r} must be letters, digits, '_' or '-' to fit '/EN#<id>/'"
        )
    types = str(phrase["phrase_type"]).split("/")
    if not all(_TYPE.fullmatch(t) for t in types):
        raise ValueError(
            f"{where}: phrase_type {phrase['phrase_type']!r} must be '/'-joined types without spaces or brackets"
        )


def format_sentence_line(
    caption: str, phrases: Sequence[dict[str, Any]], image_id: str = "", index: int = 0
) -> str:
    """The annotated line of `caption`: each phrase's words wrapped in `[/EN#<id>/<types> ... ]`.

    Markup always sits on whitespace boundaries, as in the release (and as its official token-based
    loader needs): where a phrase starts or ends inside a whitespace-separated token (e.g. "a dog" in
    "a dog's toy"), a space is inserted there. That never changes `split_words(caption)`, because a span
    edge is always between two words of it. Overlapping phrases cannot be written and raise `ValueError`.
    """
    offsets = _word_offsets(caption, image_id, index)
    # (character offset, order, text): closing marks sort before opening ones at the same offset.
    inserts: list[tuple[int, int, str]] = []
    previous_end = -1
    for phrase in sorted(phrases, key=lambda p: (p["first_word"], p["num_words"])):
        _check_writable(image_id, index, caption, phrase)
        first, count = int(phrase["first_word"]), int(phrase["num_words"])
        if first < 0 or count < 1 or first + count > len(offsets):
            raise ValueError(
                f"image_id {image_id!r}, caption {index}: phrase {phrase['phrase']!r} has span "
                f"({first}, {count}) outside the caption's {len(offsets)} words"
            )
        if first < previous_end:
            raise ValueError(
                f"image_id {image_id!r}, caption {index}: phrase {phrase['phrase']!r} overlaps the phrase "
                "before it; the format cannot nest phrases"
            )
        previous_end = first + count
        start, end = offsets[first][0], offsets[first + count - 1][1]
        inserts.append((start, 1, f"[/EN#{phrase['entity_id']}/{phrase['phrase_type']} "))
        inserts.append((end, 0, "]"))
    pieces: list[str] = []
    cursor = 0
    for offset, is_open, text in sorted(inserts):
        pieces.append(caption[cursor:offset])
        cursor = offset
        before = "".join(pieces)
        if is_open and before and not before[-1].isspace():
            pieces.append(" ")
        if not is_open and offset < len(caption) and not caption[offset].isspace():
            text += " "
        pieces.append(text)
    pieces.append(caption[cursor:])
    return " ".join("".join(pieces).split())


def _entity_objects(image_id: str, phrases_per_caption: Iterable[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """entity id -> (integer boxes, is scene, is notvisual), checking an entity has the same boxes everywhere."""
    entities: dict[str, tuple[list[tuple[int, int, int, int]], bool, bool]] = {}
    for index, phrases in enumerate(phrases_per_caption):
        for phrase in phrases:
            boxes = [_to_one_based(box) for box in phrase["boxes"] or []]
            types = set(str(phrase["phrase_type"]).split("/"))
            entity_id = str(phrase["entity_id"])
            if entity_id in entities and entities[entity_id][0] != boxes:
                raise ValueError(
                    f"image_id {image_id!r}, caption {index}: entity {entity_id!r} has boxes {boxes}, "
                    f"but {entities[entity_id][0]} in an earlier caption; one entity has one set of boxes"
                )
            scene = SCENE_TYPE in types or (entity_id in entities and entities[entity_id][1])
            notvisual = NOTVISUAL_TYPE in types and (entity_id not in entities or entities[entity_id][2])
            entities[entity_id] = (boxes, scene, notvisual)
    return entities


def _to_one_based(box: Sequence[float]) -> tuple[int, int, int, int]:
    """0-based float edges -> 1-based inclusive integers, a degenerate box kept one pixel wide."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return x1 + 1, y1 + 1, max(x2, x1 + 1), max(y2, y1 + 1)


def _sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


def format_annotation(
    image_id: str, image_size: Sequence[int], phrases_per_caption: Iterable[Sequence[dict[str, Any]]]
) -> str:
    """The `Annotations/<id>.xml` text of one image.

    One `object` per (entity, box). A `scene`-typed entity with boxes also gets `<scene>1</scene>` in
    each of its box objects: its boxes are kept (the built-in corpus's context regions), and the flag
    still marks it as scene for tools that skip scene phrases (the official loader reads flags only on
    box-less objects, so it is unaffected). An entity without boxes gets one object
    `<nobndbox>1</nobndbox><scene>0|1</scene>`, except `notvisual` ones, which have no object at all,
    as in the release.
    """
    annotation = ET.Element("annotation")
    _sub(annotation, "filename", f"{image_id}.jpg")
    size = _sub(annotation, "size")
    width, height = (int(v) for v in image_size)
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        _sub(size, tag, value)
    for entity_id, (boxes, scene, notvisual) in _entity_objects(image_id, phrases_per_caption).items():
        for xmin, ymin, xmax, ymax in boxes:
            obj = _sub(annotation, "object")
            _sub(obj, "name", entity_id)
            bndbox = _sub(obj, "bndbox")
            for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
                _sub(bndbox, tag, value)
            if scene:
                _sub(obj, "scene", 1)
        if not boxes and not notvisual:
            obj = _sub(annotation, "object")
            _sub(obj, "name", entity_id)
            _sub(obj, "nobndbox", 1)
            _sub(obj, "scene", int(scene))
    ET.indent(annotation, space="  ")
    return ET.tostring(annotation, encoding="unicode") + "\n"


def write_entities_annotations(dataset: datasets.Dataset, root: str | Path) -> None:
    """Write each row as `root/Sentences/<image_id>.txt` and `root/Annotations/<image_id>.xml`.

    `dataset` needs `image_id`, `image_size`, `captions` and `phrases` (the features are never read).
    Boxes become 1-based inclusive integers (`xmin = round(x1) + 1`, `xmax = round(x2)`); see
    `format_annotation` for phrases without boxes and `scene` phrases. `read_image_entities` /
    `attach_entities` read the files back with spans and ids exact and boxes within 0.5 px.
    """
    missing = [c for c in ("image_id", "image_size", "captions", "phrases") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"write_entities_annotations needs column(s) {missing}, found {dataset.column_names}"
        )
    rows = dataset.select_columns(["image_id", "image_size", "captions", "phrases"]).with_format("arrow")[:]
    (Path(root) / SENTENCES_DIR).mkdir(parents=True, exist_ok=True)
    (Path(root) / ANNOTATIONS_DIR).mkdir(parents=True, exist_ok=True)
    for image_id, image_size, captions, phrases in zip(
        *(rows.column(c).to_pylist() for c in ("image_id", "image_size", "captions", "phrases")), strict=True
    ):
        if phrases is None or len(phrases) != len(captions):
            raise ValueError(
                f"image_id {image_id!r}: expected one phrase list per caption ({len(captions)}), "
                f"found {None if phrases is None else len(phrases)}"
            )
        lines = [
            format_sentence_line(c, p, image_id, i)
            for i, (c, p) in enumerate(zip(captions, phrases, strict=True))
        ]
        sentences_path(root, image_id).write_text("\n".join(lines) + "\n", encoding="utf-8")
        annotation_path(root, image_id).write_text(
            format_annotation(image_id, image_size, phrases), encoding="utf-8"
        )
