"""The text rules every reader shares (`modeling_ccr/data/text_files.py`): byte-order marks, CR/LF and lone
CR line endings, a last line cut off mid-record, non-UTF-8 bytes, repeated ids, and the captions-per-image
count, for the precomp, TSV, Karpathy and Entities readers and `ccr extract`'s captions files."""

from __future__ import annotations

import numpy as np
import pytest
from convert_files import karpathy_entry, tsv_line, write_karpathy, write_precomp

from modeling_ccr.cli import main
from modeling_ccr.data.flickr30k_entities import (
    EntitiesFormatError,
    format_sentence_line,
    parse_annotation,
    parse_sentences,
)
from modeling_ccr.data.formats.butd_tsv import TsvFormatError, read_tsv_rows
from modeling_ccr.data.formats.karpathy import KarpathyFormatError, read_karpathy
from modeling_ccr.data.formats.scan_precomp import PrecompFormatError, open_precomp_split
from modeling_ccr.data.text_files import BOM, TextFileError, read_lines, read_text
from modeling_ccr.vision.corpus import CaptionsError, read_captions

CAPTIONS = [f"a dog number {i} runs" for i in range(10)]
PHRASES = [
    {"entity_id": "7", "phrase": "a red dog", "phrase_type": "animals", "first_word": 0, "num_words": 3},
    {"entity_id": "8", "phrase": "the grass", "phrase_type": "scene", "first_word": 5, "num_words": 2},
]
SENTENCE = format_sentence_line("a red dog runs on the grass .", PHRASES)


# ------------------------------------------------------------------------------ the shared helper
@pytest.mark.parametrize(
    "data",
    [b"one\ntwo\nthree\n", b"one\r\ntwo\r\nthree\r\n", b"one\rtwo\rthree\r", b"one\r\ntwo\nthree\r"],
    ids=["LF", "CRLF", "CR", "mixed"],
)
def test_every_line_ending_gives_the_same_lines(tmp_path, data):
    path = tmp_path / "lines.txt"
    path.write_bytes(BOM + data)
    assert [line.text for line in read_lines(path)] == ["one", "two", "three"]


def test_only_line_endings_end_a_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes("a\x0cb\u2028c\x1dd\n".encode())
    assert [line.text for line in read_lines(path)] == ["a\x0cb\u2028c\x1dd"]


def test_a_last_line_without_its_newline_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"one\ntwo\nthr")
    with pytest.raises(TextFileError, match=r"lines\.txt, line 3: the last line has no line ending"):
        read_lines(path)
    assert [line.text for line in read_lines(path, final_newline=False)] == ["one", "two", "thr"]


def test_a_non_utf8_byte_names_the_line_and_column(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"one\r\ntwo\nab\xffc\n")
    with pytest.raises(TextFileError, match=r"lines\.txt, line 3, column 3: not UTF-8 text \(byte ff\)"):
        read_lines(path)
    with pytest.raises(TextFileError, match=r"lines\.txt, line 3, column 3: not UTF-8 text"):
        read_text(path)


# ------------------------------------------------------------------------------ SCAN precomp
def precomp(tmp_path, captions_text: bytes, ids_text: bytes | None = None):
    write_precomp(tmp_path, "train", np.ones((2, 3, 4), np.float32), CAPTIONS, ids=["11", "12"])
    (tmp_path / "train_caps.txt").write_bytes(captions_text)
    if ids_text is not None:
        (tmp_path / "train_ids.txt").write_bytes(ids_text)
    return open_precomp_split(tmp_path, "train")


def test_precomp_captions_with_a_bom_and_crlf_read_as_the_clean_file(tmp_path):
    clean = "".join(f"{c}\n" for c in CAPTIONS).encode()
    windows = BOM + clean.replace(b"\n", b"\r\n")
    split = precomp(tmp_path, windows, BOM + b"11\r\n12\r\n")
    assert split.captions == CAPTIONS and split.image_ids == ["11", "12"]


def test_a_precomp_captions_file_cut_mid_line_is_refused(tmp_path):
    cut = "".join(f"{c}\n" for c in CAPTIONS).encode()[:-4]  # "... runs\n" -> "... r"
    with pytest.raises(
        PrecompFormatError, match=r"train_caps\.txt, line 10: the last line has no line ending"
    ):
        precomp(tmp_path, cut)


def test_precomp_ids_cut_mid_line_are_refused(tmp_path):
    with pytest.raises(PrecompFormatError, match=r"train_ids\.txt, line 2: the last line has no line ending"):
        precomp(tmp_path, "".join(f"{c}\n" for c in CAPTIONS).encode(), b"11\n1")


@pytest.mark.parametrize("count", [0, -1])
def test_open_precomp_split_refuses_a_count_below_one(tmp_path, count):
    write_precomp(tmp_path, "train", np.ones((2, 3, 4), np.float32), CAPTIONS)
    with pytest.raises(
        PrecompFormatError, match=rf"captions_per_image must be a positive integer, found {count}"
    ):
        open_precomp_split(tmp_path, "train", captions_per_image=count)


# ------------------------------------------------------------------------------ bottom-up-attention TSV
def tsv_rows(tmp_path, data: bytes):
    path = tmp_path / "features.tsv"
    path.write_bytes(data)
    return [(row.image_id, row.problem, row.features.tolist()) for row in read_tsv_rows([path])]


ROWS = (
    tsv_line("11", 64, 48, np.array([[0, 0, 10, 10]], np.float32), np.ones((1, 4), np.float32))
    + tsv_line("12", 64, 48, np.array([[1, 1, 9, 9]], np.float32), np.full((1, 4), 2, np.float32))
).encode()


def test_tsv_rows_with_a_bom_and_crlf_endings_read_as_the_clean_file(tmp_path):
    clean = tsv_rows(tmp_path, ROWS)
    assert [image_id for image_id, problem, _ in clean] == ["11", "12"] and not any(p for _, p, _ in clean)
    assert tsv_rows(tmp_path, BOM + ROWS.replace(b"\n", b"\r\n")) == clean


def test_a_tsv_cut_mid_row_is_refused_naming_the_line(tmp_path):
    with pytest.raises(TsvFormatError, match=r"features\.tsv, line 2: the last line has no line ending"):
        tsv_rows(tmp_path, ROWS[:-20])


# ------------------------------------------------------------------------------ Karpathy
def test_a_karpathy_file_with_a_bom_reads_as_the_clean_file(tmp_path):
    path = write_karpathy(tmp_path / "k.json", [karpathy_entry("11", "train", 0, ["a dog"], 0)])
    clean = read_karpathy(path)
    path.write_bytes(BOM + path.read_bytes())
    assert read_karpathy(path) == clean and clean[0].image_id == "11"


def test_a_sentid_reused_across_images_is_refused(tmp_path):
    images = [
        karpathy_entry("11", "train", 0, ["a dog", "a cat"], 0),
        karpathy_entry("12", "test", 1, ["x"], 1),
    ]
    path = write_karpathy(tmp_path / "k.json", images)
    with pytest.raises(
        KarpathyFormatError,
        match=r"images\[1\] \(image id '12'\), sentences\[0\]: sentid 1 is already used by images\[0\]",
    ):
        read_karpathy(path)


def test_a_karpathy_file_cut_off_names_the_line(tmp_path):
    path = write_karpathy(tmp_path / "k.json", [karpathy_entry("11", "train", 0, ["a dog"], 0)])
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(KarpathyFormatError, match=r"k\.json, line 1, column \d+: not valid JSON"):
        read_karpathy(path)


# ------------------------------------------------------------------------------ Flickr30k Entities
def test_a_bom_does_not_shift_the_phrase_spans_of_the_first_caption(tmp_path):
    path = tmp_path / "123.txt"
    path.write_bytes((SENTENCE + "\n" + SENTENCE + "\n").encode())
    clean = parse_sentences(path)
    path.write_bytes(BOM + (SENTENCE + "\r\n" + SENTENCE + "\r").encode())
    assert parse_sentences(path) == clean
    assert clean[1][0][0]["first_word"] == 0 and clean[0][0] == "a red dog runs on the grass ."


def test_an_entities_line_cut_inside_a_phrase_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "123.txt"
    path.write_bytes((SENTENCE + "\n" + SENTENCE[:-8]).encode())
    with pytest.raises(EntitiesFormatError, match=r"123\.txt, line 2: unbalanced brackets"):
        parse_sentences(path)


def test_entities_files_with_bad_bytes_name_the_line(tmp_path):
    path = tmp_path / "123.txt"
    path.write_bytes((SENTENCE + "\n").encode() + b"a \xfe dog\n")
    with pytest.raises(EntitiesFormatError, match=r"123\.txt, line 2, column 3: not UTF-8"):
        parse_sentences(path)
    xml = tmp_path / "123.xml"
    xml.write_bytes(BOM + b"<annotation><size><width>5</width><height>4</height></size></annotation>\n")
    assert parse_annotation(xml)[0] == (5, 4)


# ------------------------------------------------------------------------------ ccr extract captions files
def test_a_captions_csv_with_a_bom_and_crlf_reads_as_the_clean_file(tmp_path):
    clean = b"image,caption,split\na.jpg,a red dog,train\nb.jpg,a blue boat,test\n"
    path = tmp_path / "captions.csv"
    path.write_bytes(clean)
    expected = read_captions(path)
    path.write_bytes(BOM + clean.replace(b"\n", b"\r\n"))
    assert read_captions(path) == expected and expected[0].filename == "a.jpg"


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("captions.csv", b"image,caption\na.jpg,a red dog\nb.jpg,a blue bo", r"captions\.csv, line 3: the last line"),
        ("captions.csv", b"image,caption\na.jpg,a red \xe9dog\n", r"captions\.csv, line 2, column 13: not UTF-8"),
        ("captions.csv", b"image,caption\na.jpg,\n", r"captions\.csv, line 2: a caption must be a non-empty"),
        ("captions.jsonl", b'{"image": "a.jpg", "caption": "a dog"}\n{"image": "b.jp', r"captions\.jsonl, line 2: not valid JSON"),
        ("captions.json", b'{"images": [{"filename": "a.jpg", "sentences": [\n', r"captions\.json, line 2, column 1: not valid JSON"),
    ],
    ids=["csv-cut", "csv-bytes", "csv-empty", "jsonl-cut", "json-cut"],
)  # fmt: skip
def test_captions_file_errors_name_the_file_and_line(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CaptionsError, match=message):
        read_captions(path)


# ------------------------------------------------------------------------------ --captions-per-image
@pytest.mark.parametrize("count", ["0", "-1"])
@pytest.mark.parametrize("converter", ["scan-precomp", "butd-tsv"])
def test_every_converter_refuses_a_captions_count_below_one_in_one_line(tmp_path, capsys, converter, count):
    write_precomp(tmp_path / "precomp", "train", np.ones((2, 3, 4), np.float32), CAPTIONS)
    karpathy = write_karpathy(tmp_path / "k.json", [karpathy_entry("11", "train", 0, CAPTIONS[:5], 0)])
    (tmp_path / "f.tsv").write_text(
        tsv_line("11", 8, 8, np.zeros((1, 4), np.float32), np.ones((1, 4), np.float32))
    )
    if converter == "scan-precomp":
        argv = ["convert", converter, str(tmp_path / "precomp"), str(tmp_path / "out")]
    else:
        argv = [
            "convert",
            converter,
            str(tmp_path / "f.tsv"),
            str(tmp_path / "out"),
            "--karpathy",
            str(karpathy),
        ]
    assert main([*argv, "--captions-per-image", count]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--captions-per-image must be a positive integer (captions kept per image), found {count}" in err
    assert not (tmp_path / "out").exists()


def test_an_entities_file_cut_before_its_last_period_is_refused_by_the_converters(tmp_path):
    from modeling_ccr.data.flickr30k_entities import format_annotation
    from modeling_ccr.data.formats.convert import ground_with_entities

    caption = "a red dog runs on the grass ."
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Sentences").mkdir()
    (tmp_path / "Annotations" / "123.xml").write_text(format_annotation("123", [50, 40], [[]]))
    sentences = tmp_path / "Sentences" / "123.txt"
    sentences.write_text(f"{SENTENCE}\n{SENTENCE}\n")
    assert ground_with_entities(tmp_path, "123", [caption, caption], None)[0] == [caption, caption]
    sentences.write_text(f"{SENTENCE}\n{SENTENCE[:-2]}")  # the cut takes " ." and the newline
    with pytest.raises(
        ValueError, match=r"caption 1: .*123\.txt's last line has no newline .*cut off mid-line"
    ):
        ground_with_entities(tmp_path, "123", [caption, caption], None)
    sentences.write_text(f"{SENTENCE}\n{SENTENCE}")  # complete, only the final newline missing: accepted
    assert ground_with_entities(tmp_path, "123", [caption, caption], None)[0] == [caption, caption]


def test_a_boxes_file_with_a_bom_reads_as_the_clean_file_and_a_cut_one_names_the_line(tmp_path):
    from modeling_ccr.vision.corpus import read_boxes

    text = '{"a.jpg": [[0, 0, 10, 10]],\n "b.jpg": [[1, 2, 3, 4]]}\n'
    (tmp_path / "boxes.json").write_bytes(BOM + text.encode())
    boxes = read_boxes(tmp_path / "boxes.json")
    assert sorted(boxes) == ["a.jpg", "b.jpg"] and boxes["b.jpg"].tolist() == [[1, 2, 3, 4]]
    (tmp_path / "cut.json").write_text(text[:40])
    with pytest.raises(CaptionsError, match=r"cut\.json, line 2, column \d+: not valid JSON"):
        read_boxes(tmp_path / "cut.json")
