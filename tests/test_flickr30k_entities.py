"""The Flickr30k Entities reader and writer, on hand-written files in the release's format."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest

from modeling_ccr.data.flickr30k_entities import (
    EntitiesFormatError,
    attach_entities,
    format_sentence_line,
    parse_annotation,
    parse_sentence_line,
    read_image_entities,
    write_entities_annotations,
)
from modeling_ccr.data.schema import corpus_features, validate_corpus
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.text.tokenization import split_words

# Two captions of one image, in the release's markup: multi-type phrase, notvisual entity 0, punctuation
# inside ("man's") and around ("hat," / "." / "'s") phrases, a scene phrase.
SENTENCES = (
    "[/EN#10/people A man] in [/EN#11/clothing an orange hat] , starring at [/EN#0/notvisual something] .\n"
    "[/EN#6729/vehicles/scene The subway] behind [/EN#10/people the man's] [/EN#12/animals dog]'s "
    "ball , near [/EN#13/scene the street] .\n"
)

# Entity 10 has two boxes; entities 11 and 14 share one box; 12 has no box; 13 is a box-less scene.
ANNOTATION = """<annotation>
  <filename>1000.jpg</filename>
  <size><width>500</width><height>333</height><depth>3</depth></size>
  <object><name>10</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>200</ymax></bndbox></object>
  <object><name>10</name><bndbox><xmin>150</xmin><ymin>20</ymin><xmax>180</xmax><ymax>60</ymax></bndbox></object>
  <object>
    <name>11</name>
    <name>14</name>
    <bndbox><xmin>20</xmin><ymin>5</ymin><xmax>60</xmax><ymax>40</ymax></bndbox>
  </object>
  <object><name>12</name><nobndbox>1</nobndbox><scene>0</scene></object>
  <object><name>13</name><nobndbox>0</nobndbox><scene>1</scene></object>
  <object><name>6729</name><bndbox><xmin>200</xmin><ymin>100</ymin><xmax>500</xmax><ymax>333</ymax></bndbox></object>
</annotation>
"""


def _write_image(root: Path, image_id: str, sentences: str = SENTENCES, annotation: str = ANNOTATION) -> None:
    (root / "Sentences").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Sentences" / f"{image_id}.txt").write_text(sentences, encoding="utf-8")
    (root / "Annotations" / f"{image_id}.xml").write_text(annotation, encoding="utf-8")


def _words(caption: str, phrase: dict) -> list[str]:
    return split_words(caption)[phrase["first_word"] : phrase["first_word"] + phrase["num_words"]]


# --- Sentences -------------------------------------------------------------------------------------------


def test_sentence_line_gives_plain_caption_and_phrases_with_types_and_ids():
    caption, phrases = parse_sentence_line(SENTENCES.splitlines()[0])
    assert caption == "A man in an orange hat , starring at something ."
    assert [(p["entity_id"], p["phrase"], p["phrase_type"]) for p in phrases] == [
        ("10", "A man", "people"),
        ("11", "an orange hat", "clothing"),
        ("0", "something", "notvisual"),
    ]


def test_multi_type_phrase_keeps_every_type_joined_by_slash():
    _, phrases = parse_sentence_line(SENTENCES.splitlines()[1])
    assert phrases[0]["phrase_type"] == "vehicles/scene"


def test_spans_index_split_words_even_with_punctuation_inside_and_around_phrases():
    caption, phrases = parse_sentence_line(SENTENCES.splitlines()[1])
    assert caption == "The subway behind the man's dog's ball , near the street ."
    spans = [(p["first_word"], p["num_words"]) for p in phrases]
    # split_words: the subway behind the man ' s dog ' s ball , near the street .
    assert spans == [(0, 2), (3, 4), (7, 1), (13, 2)]
    for phrase in phrases:
        assert _words(caption, phrase) == split_words(phrase["phrase"])


def test_bracket_that_cuts_a_word_in_two_is_rejected():
    with pytest.raises(EntitiesFormatError, match="word boundaries"):
        parse_sentence_line("a [/EN#1/animals dog]s runs")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[/EN#1/people a man runs", "never closed"),
        ("a man] runs", "closes no phrase"),
        ("[/EN#1/people a [/EN#2/other man]]", "inside phrase"),
        ("[/EN#/people a man]", "bad phrase header"),
        ("[/EN#1 a man]", "bad phrase header"),
        ("[EN#1/people a man]", "bad phrase header"),
        ("[/EN#1/people]", "not followed by a space"),
        ("[/EN#1/people ] runs", "no words"),
    ],
)
def test_malformed_sentence_file_error_names_file_and_line(tmp_path, line, message):
    _write_image(tmp_path, "1", sentences=f"[/EN#5/people A dog] runs .\n\n{line}\n")
    with pytest.raises(EntitiesFormatError, match=message) as error:
        read_image_entities(tmp_path, "1")
    assert f"{tmp_path / 'Sentences' / '1.txt'}, line 3" in str(error.value)


# --- Annotations -----------------------------------------------------------------------------------------


def test_annotation_boxes_become_zero_based_edges_and_names_share_a_box(tmp_path):
    _write_image(tmp_path, "1000")
    size, boxes, flags = parse_annotation(tmp_path / "Annotations" / "1000.xml")
    assert size == (500, 333)
    assert boxes["10"] == [[0.0, 0.0, 100.0, 200.0], [149.0, 19.0, 180.0, 60.0]]
    assert boxes["11"] == boxes["14"] == [[19.0, 4.0, 60.0, 40.0]]
    assert "12" not in boxes and "13" not in boxes
    assert flags == {"12": frozenset({"nobndbox"}), "13": frozenset({"scene"})}


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ("<annotation><object><name>1</name><nobndbox>1</nobndbox></object></annotation>", "annotation/size"),
        (ANNOTATION.replace("<xmin>150</xmin>", "<xmin>15.5</xmin>"), r"object\[2\]/bndbox/xmin>.*integer"),
        (ANNOTATION.replace("<xmax>180</xmax>", "<xmax>120</xmax>"), r"object\[2\]/bndbox>.*xmax < xmin"),
        (ANNOTATION.replace("<height>333</height>", ""), "annotation/size/height> is missing"),
        (ANNOTATION.replace("<name>12</name>", ""), r"object\[4\]> needs one or more"),
        (ANNOTATION.replace("<xmax>180</xmax>", "<xmax>180</ymax>"), "line 5, column .*unreadable XML"),
    ],
)
def test_malformed_annotation_error_names_file_and_element(tmp_path, annotation, message):
    _write_image(tmp_path, "1", annotation=annotation)
    with pytest.raises(EntitiesFormatError, match=message) as error:
        parse_annotation(tmp_path / "Annotations" / "1.xml")
    assert str(tmp_path / "Annotations" / "1.xml") in str(error.value)


def test_missing_file_error_names_the_file(tmp_path):
    _write_image(tmp_path, "1")
    (tmp_path / "Sentences" / "1.txt").unlink()
    with pytest.raises(EntitiesFormatError, match=r"Sentences/1\.txt: file not found"):
        read_image_entities(tmp_path, "1")


# --- One image, a split ----------------------------------------------------------------------------------


def test_each_phrase_gets_every_box_of_its_entity_and_boxless_entities_get_none(tmp_path):
    _write_image(tmp_path, "1000")
    size, captions, phrases = read_image_entities(tmp_path, "1000")
    assert size == (500, 333) and len(captions) == 2
    by_entity = {p["entity_id"]: p["boxes"] for caption in phrases for p in caption}
    assert by_entity["10"] == [[0.0, 0.0, 100.0, 200.0], [149.0, 19.0, 180.0, 60.0]]
    assert by_entity["11"] == [[19.0, 4.0, 60.0, 40.0]]
    assert by_entity["0"] == by_entity["12"] == by_entity["13"] == []  # notvisual, nobndbox, scene
    assert by_entity["6729"] == [[199.0, 99.0, 500.0, 333.0]]  # a scene-typed phrase with a box keeps it


def test_attach_entities_sets_phrases_and_keeps_the_datasets_captions(tmp_path):
    _write_image(tmp_path, "1000")
    captions = ["a man in an orange hat, starring at something.", SENTENCES.splitlines()[1]]
    captions[1] = parse_sentence_line(captions[1])[0]
    dataset = datasets.Dataset.from_dict({"image_id": ["1000"], "captions": [captions]})
    attached = attach_entities(dataset, tmp_path)
    assert attached.column_names == ["image_id", "captions", "image_size", "phrases"]
    row = attached[0]
    assert row["captions"] == captions and row["image_size"] == [500, 333]
    assert [p["entity_id"] for p in row["phrases"][0]] == ["10", "11", "0"]
    assert _words(row["captions"][0], row["phrases"][0][1]) == ["an", "orange", "hat"]


def test_attach_entities_names_image_and_caption_when_captions_differ(tmp_path):
    _write_image(tmp_path, "1000")
    dataset = datasets.Dataset.from_dict({"image_id": ["1000"], "captions": [["a man in a hat .", "x"]]})
    with pytest.raises(ValueError, match=r"image_id '1000', caption 0"):
        attach_entities(dataset, tmp_path)


# --- Writer and round trip -------------------------------------------------------------------------------


def test_writer_puts_markup_on_whitespace_boundaries_without_changing_words():
    phrases = [
        {"entity_id": "1", "phrase": "a dog", "phrase_type": "animals", "first_word": 0, "num_words": 2},
        {"entity_id": "2", "phrase": "toy", "phrase_type": "other", "first_word": 4, "num_words": 1},
    ]
    line = format_sentence_line("a dog's toy.", phrases)
    assert line == "[/EN#1/animals a dog] 's [/EN#2/other toy] ."
    caption, parsed = parse_sentence_line(line)
    assert split_words(caption) == split_words("a dog's toy.")
    assert [(p["first_word"], p["num_words"]) for p in parsed] == [(0, 2), (4, 1)]


def test_built_in_corpus_round_trips_through_the_entities_format(tmp_path):
    test = build_synthetic_corpus(SyntheticCorpusConfig(train_images=6, validation_images=6, test_images=6))[
        "test"
    ]
    write_entities_annotations(test, tmp_path)
    attached = attach_entities(test.remove_columns(["phrases"]), tmp_path)
    assert attached.features == test.features
    validate_corpus(attached, "test", expected_feature_dim=corpus_features(128)["features"].shape[1])
    for expected_row, row in zip(test, attached, strict=True):
        assert row["captions"] == expected_row["captions"]
        for expected, got in zip(expected_row["phrases"], row["phrases"], strict=True):
            key = ("entity_id", "phrase", "phrase_type", "first_word", "num_words")
            assert [[p[k] for k in key] for p in got] == [[p[k] for k in key] for p in expected]
            for p, q in zip(expected, got, strict=True):
                assert len(p["boxes"]) == len(q["boxes"])
                if p["boxes"]:
                    np.testing.assert_allclose(np.array(q["boxes"]), np.array(p["boxes"]), atol=1.0)


def test_hand_written_image_survives_read_write_read(tmp_path):
    _write_image(tmp_path / "original", "1000")
    once = attach_entities(datasets.Dataset.from_dict({"image_id": ["1000"]}), tmp_path / "original")
    write_entities_annotations(once, tmp_path / "copy")
    twice = attach_entities(datasets.Dataset.from_dict({"image_id": ["1000"]}), tmp_path / "copy")
    assert twice[0]["phrases"] == once[0]["phrases"]
    # The writer spaces "dog]'s" to "dog] 's" so markup stays on whitespace; the words are unchanged.
    assert [split_words(c) for c in twice[0]["captions"]] == [split_words(c) for c in once[0]["captions"]]
    _, _, flags = parse_annotation(tmp_path / "copy" / "Annotations" / "1000.xml")
    assert flags["12"] == {"nobndbox"} and flags["13"] == {"nobndbox", "scene"}
    assert flags["6729"] == {"scene"} and "0" not in flags  # a notvisual entity gets no object


def test_writer_refuses_an_entity_with_different_boxes_in_two_captions(tmp_path):
    phrase = {"entity_id": "1", "phrase": "a dog", "phrase_type": "animals", "first_word": 0, "num_words": 2}
    phrases = [[{**phrase, "boxes": [[0, 0, 10, 10]]}], [{**phrase, "boxes": [[0, 0, 20, 20]]}]]
    dataset = datasets.Dataset.from_dict(
        {"image_id": ["7"], "image_size": [[50, 50]], "captions": [["a dog", "a dog"]], "phrases": [phrases]}
    )
    with pytest.raises(ValueError, match=r"image_id '7', caption 1: entity '1' has boxes"):
        write_entities_annotations(dataset, tmp_path)
