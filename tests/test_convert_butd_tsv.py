"""`convert_butd_tsv` and the TSV / Karpathy readers: real layouts, malformed rows, missing fields."""

from __future__ import annotations

import dataclasses
import json

import datasets
import numpy as np
import pytest
from convert_files import b64, export_corpus, karpathy_entry, tsv_line, write_karpathy, write_tsv

from modeling_ccr.cli import main
from modeling_ccr.data.formats.butd_tsv import read_tsv_rows
from modeling_ccr.data.formats.convert import ConversionError, ConversionOptions, convert_butd_tsv
from modeling_ccr.data.formats.karpathy import KarpathyFormatError, read_karpathy
from modeling_ccr.data.schema import validate_corpus
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus

DIM = 8
BOXES = np.array([[0, 0, 10, 10], [5, 5, 40, 30]], dtype=np.float32)


@pytest.fixture(scope="module")
def corpus():
    config = SyntheticCorpusConfig(train_images=10, validation_images=4, test_images=4, feature_dim=DIM)
    return build_synthetic_corpus(config)


def convert(*args, **kwargs):
    option_names = {f.name for f in dataclasses.fields(ConversionOptions)}
    options = {key: kwargs.pop(key) for key in list(kwargs) if key in option_names}
    return convert_butd_tsv(*args, **kwargs, options=ConversionOptions(progress=False, **options))


def two_images(tmp_path):
    """A Karpathy file of images "1" (train) and "2" (test), five captions each."""
    captions = [f"a caption number {i}" for i in range(5)]
    images = [karpathy_entry("1", "train", 0, captions, 0), karpathy_entry("2", "test", 1, captions, 5)]
    return write_karpathy(tmp_path / "k.json", images)


def good_row(image_id="1"):
    return (image_id, 64, 48, BOXES, np.ones((2, DIM), dtype=np.float32))


def test_tsv_files_with_karpathy_and_entities_round_trip_the_corpus(corpus, tmp_path):
    sources = export_corpus(corpus, tmp_path, tsv_files=3)
    report = convert(sources["tsv"], sources["karpathy"], tmp_path / "out", entities_dir=sources["entities"])
    assert report.images == {"train": 10, "validation": 4, "test": 4} and not report.skipped
    converted = datasets.load_from_disk(str(tmp_path / "out"))
    for split in ("train", "validation", "test"):
        validate_corpus(converted[split], split, DIM, 5)
        ours, theirs = converted[split].with_format("numpy")[:], corpus[split].with_format("numpy")[:]
        assert list(ours["image_id"]) == list(theirs["image_id"])
        for column in ("features", "boxes"):
            for a, b in zip(ours[column], theirs[column], strict=True):
                np.testing.assert_array_equal(a, b)
        assert converted[split]["captions"] == corpus[split]["captions"]
        assert converted[split]["image_size"] == corpus[split]["image_size"]
        assert [len(c) for r in converted[split]["phrases"] for c in r] == [
            len(c) for r in corpus[split]["phrases"] for c in r
        ]


def test_a_real_size_row_exceeds_the_default_csv_field_limit_and_is_read(tmp_path):
    features = np.random.default_rng(0).normal(size=(36, 2048)).astype(np.float32)
    assert len(b64(features)) > 131072  # Python's default csv field size limit
    boxes = np.tile(BOXES[:1], (36, 1))
    path = write_tsv(tmp_path / "big.tsv", [("7", 64, 48, boxes, features)])
    (row,) = read_tsv_rows([path])
    assert row.problem is None
    np.testing.assert_array_equal(row.features, features)


def replace_field(index, value):
    fields = tsv_line(*good_row()).rstrip("\n").split("\t")
    fields[index] = value
    return "\t".join(fields) + "\n"


MALFORMED = {
    "field count": ("\t".join(["1", "64", "48", "2"]) + "\n", r": 4 tab-separated fields, expected 6"),
    "num_boxes vs boxes": (
        replace_field(3, "3"),
        r"field 'boxes': 8 float32 values, expected num_boxes x 4 = 12",
    ),
    "num_boxes vs features": (
        replace_field(5, b64(np.ones(3 * DIM - 1, dtype=np.float32))),
        r"field 'features': 23 float32 values is not num_boxes \(2\)",
    ),
    "base64": (replace_field(4, "not*base64!"), r"field 'boxes': undecodable base64"),
    "nan": (
        replace_field(5, b64(np.array([[1.0] * DIM, [1.0] * 3 + [np.nan] + [1.0] * (DIM - 4)], np.float32))),
        r"field 'features': non-finite value nan at box 1, column 3",
    ),
    "box outside": (
        replace_field(4, b64(np.array([[0, 0, 10, 10], [5, 5, 90, 30]], np.float32))),
        r"field 'boxes': box 1 \[5.0, 5.0, 90.0, 30.0\] lies outside the 64 x 48 image",
    ),
    "image size": (replace_field(1, "wide"), r"field 'image_w': expected an integer, found 'wide'"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_row_names_the_file_line_and_field_and_is_skipped_with_skip_bad(name, tmp_path):
    line, message = MALFORMED[name]
    tsv = write_tsv(tmp_path / "rows.tsv", [line, good_row("2")])
    with pytest.raises(ConversionError, match=rf"rows.tsv, line 1.*{message}"):
        convert([tsv], two_images(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # a failed conversion leaves no corpus behind
    report = convert([tsv], two_images(tmp_path), tmp_path / "out", skip_bad=True)
    assert report.images == {"test": 1}
    assert [s["image_id"] for s in report.skipped] == ["1"]
    logged = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert logged["skipped"][0]["reason"] == report.skipped[0]["reason"]


def test_a_row_whose_feature_dim_differs_from_the_rows_before_it_is_refused(tmp_path):
    other = ("2", 64, 48, BOXES, np.ones((2, DIM + 1), dtype=np.float32))
    tsv = write_tsv(tmp_path / "rows.tsv", [good_row("1"), other])
    with pytest.raises(
        ConversionError, match=r"line 2 \(image_id 2\), field 'features': 9-d features, expected 8"
    ):
        convert([tsv], two_images(tmp_path), tmp_path / "out")


def test_a_karpathy_image_without_a_tsv_row_is_an_error_or_a_reported_skip(tmp_path):
    tsv = write_tsv(tmp_path / "rows.tsv", [good_row("2"), good_row("99")])
    with pytest.raises(
        ConversionError, match=r"image '1' \(1.jpg, Karpathy split 'train'\) has no row in the TSV"
    ):
        convert([tsv], two_images(tmp_path), tmp_path / "out")
    report = convert([tsv], two_images(tmp_path), tmp_path / "out", skip_bad=True)
    assert [s["image_id"] for s in report.skipped] == ["1"]
    assert any("1 TSV rows are for images not in the Karpathy file" in note for note in report.notes)


def test_a_repeated_image_id_across_tsv_files_is_refused(tmp_path):
    first = write_tsv(tmp_path / "a.tsv", [good_row("1"), good_row("2")])
    second = write_tsv(tmp_path / "b.tsv", [good_row("1")])
    with pytest.raises(
        ConversionError, match=r"b.tsv, line 1: image_id '1' appears again \(first at .*a.tsv, line 1\)"
    ):
        convert([first, second], two_images(tmp_path), tmp_path / "out")


def test_captions_beyond_the_first_five_are_counted_and_their_ids_kept_for_the_five(tmp_path):
    captions = [f"caption {i}" for i in range(7)]
    karpathy = write_karpathy(tmp_path / "k.json", [karpathy_entry("1", "test", 0, captions, 40)])
    report = convert([write_tsv(tmp_path / "a.tsv", [good_row("1")])], karpathy, tmp_path / "out")
    row = datasets.load_from_disk(str(tmp_path / "out"))["test"][0]
    assert row["captions"] == captions[:5] and row["caption_ids"] == ["40", "41", "42", "43", "44"]
    assert any("2 Karpathy sentences beyond the first 5" in note for note in report.notes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda image: image.pop("split"), r"images\[0\] \(filename '1.jpg'\): missing field 'split'"),
        (
            lambda image: image["sentences"][1].pop("raw"),
            r"images\[0\] \(filename '1.jpg'\), sentences\[1\]: missing field 'raw'",
        ),
        (lambda image: image.update(split="holdout"), r"field 'split' must be one of"),
        (lambda image: image.update(cocoid="12"), r"field 'cocoid' must be int, found '12'"),
    ],
)
def test_a_karpathy_file_missing_a_field_names_the_image_and_field(edit, message, tmp_path):
    image = karpathy_entry("1", "test", 0, ["a b c"] * 5, 0)
    edit(image)
    path = write_karpathy(tmp_path / "k.json", [image])
    with pytest.raises(KarpathyFormatError, match=message):
        read_karpathy(path)


def test_coco_images_are_identified_by_cocoid(tmp_path):
    image = karpathy_entry("COCO_val2014_000000391895", "restval", 0, ["a b c"] * 5, 0)
    image["cocoid"] = 391895
    (read,) = read_karpathy(write_karpathy(tmp_path / "k.json", [image]))
    assert read.image_id == "391895" and read.split == "restval"


def test_the_cli_converts_several_tsv_files(tmp_path, capsys):
    first = write_tsv(tmp_path / "a.tsv", [good_row("1")])
    second = write_tsv(tmp_path / "b.tsv", [good_row("2")])
    args = [
        "convert",
        "butd-tsv",
        "--karpathy",
        str(two_images(tmp_path)),
        str(first),
        str(second),
        str(tmp_path / "out"),
    ]
    assert main([*args, "--float16"]) == 0
    assert "train 1 images, test 1 images" in capsys.readouterr().out
    assert datasets.load_from_disk(str(tmp_path / "out"))["train"].features["features"].dtype == "float16"
