"""`convert_precomp`: SCAN precomp folders (+ Karpathy, TSV boxes, Entities) into the corpus schema."""

from __future__ import annotations

import dataclasses
import json

import datasets
import numpy as np
import pytest
from convert_files import export_corpus, karpathy_entry, write_karpathy, write_precomp, write_tsv

from modeling_ccr.cli import main
from modeling_ccr.data.formats.convert import (
    REPORT_FILE,
    ConversionError,
    ConversionOptions,
    convert_precomp,
    normalise_caption,
)
from modeling_ccr.data.formats.scan_precomp import PrecompFormatError
from modeling_ccr.data.schema import corpus_features, validate_corpus
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus

DIM = 8


@pytest.fixture(scope="module")
def corpus():
    config = SyntheticCorpusConfig(train_images=12, validation_images=4, test_images=4, feature_dim=DIM)
    return build_synthetic_corpus(config)


@pytest.fixture
def sources(corpus, tmp_path):
    return export_corpus(corpus, tmp_path)


def small_precomp(tmp_path, n_images=3, per_caption=False, ids=True):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n_images, 4, DIM)).astype(np.float32)
    captions = [f"image {i} caption {j} ." for i in range(n_images) for j in range(5)]
    image_ids = [str(100 + i) for i in range(n_images)] if ids else None
    write_precomp(tmp_path / "precomp", "test", features, captions, image_ids, per_caption)
    return tmp_path / "precomp", features, captions


def convert(*args, **kwargs):
    option_names = {f.name for f in dataclasses.fields(ConversionOptions)}
    options = {key: kwargs.pop(key) for key in list(kwargs) if key in option_names}
    return convert_precomp(*args, **kwargs, options=ConversionOptions(progress=False, **options))


def test_precomp_with_karpathy_tsv_boxes_and_entities_round_trips_the_corpus(corpus, sources, tmp_path):
    report = convert(
        sources["precomp"],
        tmp_path / "out",
        karpathy_path=sources["karpathy"],
        tsv_paths=sources["tsv"],
        entities_dir=sources["entities"],
    )
    converted = datasets.load_from_disk(str(tmp_path / "out"))
    assert sorted(converted) == ["test", "train", "validation"]
    assert report.images == {"train": 12, "validation": 4, "test": 4} and not report.skipped
    for split in ("train", "validation", "test"):
        validate_corpus(converted[split], split, DIM, 5)
        ours, theirs = converted[split].with_format("numpy")[:], corpus[split].with_format("numpy")[:]
        assert list(ours["image_id"]) == list(theirs["image_id"])
        for a, b in zip(ours["features"], theirs["features"], strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(ours["boxes"], theirs["boxes"], strict=True):
            np.testing.assert_array_equal(a, b)
        assert converted[split]["captions"] == corpus[split]["captions"]
        assert converted[split]["image_size"] == corpus[split]["image_size"]
        spans = [
            [(p["entity_id"], p["first_word"], p["num_words"]) for p in c]
            for r in converted[split]["phrases"]
            for c in r
        ]
        expected = [
            [(p["entity_id"], p["first_word"], p["num_words"]) for p in c]
            for r in corpus[split]["phrases"]
            for c in r
        ]
        assert spans == expected
    first_ids = converted["train"][0]["caption_ids"]
    assert first_ids == ["0", "1", "2", "3", "4"]  # Karpathy sentids of the first image
    assert json.loads((tmp_path / "out" / REPORT_FILE).read_text())["images"]["train"] == 12


def test_one_feature_row_per_caption_is_detected_and_each_image_stored_once(tmp_path):
    directory, features, _ = small_precomp(tmp_path, per_caption=True)
    convert(directory, tmp_path / "out")
    stored = datasets.load_from_disk(str(tmp_path / "out"))["test"].with_format("numpy")[:]["features"]
    np.testing.assert_array_equal(np.stack(list(stored)), features)


def test_caption_rows_of_one_image_that_differ_are_refused(tmp_path):
    directory, features, _ = small_precomp(tmp_path)
    rows = np.repeat(features, 5, axis=0)
    rows[7] += 1.0  # image 1's third row
    np.save(directory / "test_ims.npy", rows)
    with pytest.raises(ConversionError, match=r"rows 5\.\.9 are image 1 .*row 7 differs from row 5"):
        convert(directory, tmp_path / "out")


def test_feature_rows_fitting_neither_layout_name_both_files(tmp_path):
    directory, features, _ = small_precomp(tmp_path)
    np.save(directory / "test_ims.npy", features[:2])
    with pytest.raises(
        PrecompFormatError, match=r"test_ims.npy has 2 feature rows but .*test_caps.txt has 15"
    ):
        convert(directory, tmp_path / "out")


def test_caption_lines_that_do_not_fill_whole_images_are_refused(tmp_path):
    directory, _, captions = small_precomp(tmp_path)
    (directory / "test_caps.txt").write_text("".join(f"{c}\n" for c in captions[:-1]))
    with pytest.raises(PrecompFormatError, match="14 caption lines, expected a positive multiple of 5"):
        convert(directory, tmp_path / "out")


def test_a_blank_caption_names_its_line_and_is_skipped_and_reported_with_skip_bad(tmp_path):
    directory, _, captions = small_precomp(tmp_path)
    captions[6] = "   "
    (directory / "test_caps.txt").write_text("".join(f"{c}\n" for c in captions))
    with pytest.raises(ConversionError, match=r"test_caps.txt, line 7: blank caption"):
        convert(directory, tmp_path / "out")
    report = convert(directory, tmp_path / "out", skip_bad=True)
    assert [s["image_id"] for s in report.skipped] == ["101"]
    assert datasets.load_from_disk(str(tmp_path / "out"))["test"]["image_id"] == ["100", "102"]


def test_non_finite_features_name_the_row_region_and_dim(tmp_path):
    directory, features, _ = small_precomp(tmp_path)
    features[2, 3, 5] = np.nan
    np.save(directory / "test_ims.npy", features)
    with pytest.raises(
        ConversionError, match=r"test_ims.npy, row 2: non-finite feature nan at region 3, dim 5"
    ):
        convert(directory, tmp_path / "out")


def test_ids_listed_once_per_caption_are_accepted_when_the_five_agree(tmp_path):
    directory, _, _ = small_precomp(tmp_path, ids=False)
    (directory / "test_ids.txt").write_text("".join(f"{7 + i // 5}\n" for i in range(15)))
    convert(directory, tmp_path / "out")
    assert datasets.load_from_disk(str(tmp_path / "out"))["test"]["image_id"] == ["7", "8", "9"]
    (directory / "test_ids.txt").write_text("".join(f"{7 + i // 5 + (i == 3)}\n" for i in range(15)))
    with pytest.raises(PrecompFormatError, match=r"test_ids.txt, lines 1\.\.5: .*ids of image 0 differ"):
        convert(directory, tmp_path / "out2")


def test_without_ids_images_get_positional_ids_and_boxes_are_refused(tmp_path):
    directory, _, _ = small_precomp(tmp_path, ids=False)
    convert(directory, tmp_path / "out")
    assert datasets.load_from_disk(str(tmp_path / "out"))["test"]["image_id"] == [
        "test_0",
        "test_1",
        "test_2",
    ]
    tsv = write_tsv(tmp_path / "a.tsv", [])
    with pytest.raises(ConversionError, match="match images by id"):
        convert(directory, tmp_path / "out2", tsv_paths=[tsv])


def test_captions_that_disagree_with_the_karpathy_sentences_name_the_image_caption_and_files(tmp_path):
    directory, _, captions = small_precomp(tmp_path)
    images = [karpathy_entry(str(100 + i), "test", i, captions[5 * i : 5 * i + 5], 5 * i) for i in range(3)]
    images[1]["sentences"][2]["raw"] = "A completely different caption"
    karpathy = write_karpathy(tmp_path / "k.json", images)
    with pytest.raises(
        ConversionError, match=r"image '101', caption 2: .*test_caps.txt line 8 .*sentid 7.*not aligned"
    ):
        convert(directory, tmp_path / "out", karpathy_path=karpathy)


def test_positional_karpathy_alignment_catches_a_shifted_order(tmp_path):
    directory, _, captions = small_precomp(tmp_path, ids=False)
    order = [1, 0, 2]  # the Karpathy file lists the first two images the other way round
    images = [
        karpathy_entry(str(i), "test", n, captions[5 * i : 5 * i + 5], 5 * i) for n, i in enumerate(order)
    ]
    karpathy = write_karpathy(tmp_path / "k.json", images)
    with pytest.raises(ConversionError, match=r"image '1', caption 0: .*'image 0 caption 0 \.'"):
        convert(directory, tmp_path / "out", karpathy_path=karpathy)
    report = convert(directory, tmp_path / "out", karpathy_path=karpathy, skip_bad=True)
    assert [s["image_id"] for s in report.skipped] == ["1", "0"]


def test_karpathy_comparison_ignores_case_spacing_and_punctuation(tmp_path):
    directory, _, captions = small_precomp(tmp_path)
    loose = [c.upper().replace(" .", ".") + "  " for c in captions]
    images = [karpathy_entry(str(100 + i), "test", i, loose[5 * i : 5 * i + 5], 5 * i) for i in range(3)]
    convert(directory, tmp_path / "out", karpathy_path=write_karpathy(tmp_path / "k.json", images))
    assert normalise_caption("A man , in a T-shirt .") == normalise_caption("a man in a t shirt")


def test_an_image_id_in_another_karpathy_split_is_an_alignment_error(tmp_path):
    directory, _, captions = small_precomp(tmp_path)
    images = [karpathy_entry(str(100 + i), "test", i, captions[5 * i : 5 * i + 5], 5 * i) for i in range(3)]
    images[2]["split"] = "train"
    with pytest.raises(
        ConversionError, match=r"test_ids.txt, line 3: image '102' is in Karpathy split 'train'"
    ):
        convert(directory, tmp_path / "out", karpathy_path=write_karpathy(tmp_path / "k.json", images))


def test_tsv_boxes_of_other_regions_are_refused_and_a_missing_row_is_reported(corpus, sources, tmp_path):
    rows = corpus["test"].with_format("numpy")
    first, second = rows[0], rows[1]
    # The second image's id on the first image's features: its boxes belong to other regions.
    swapped = write_tsv(
        tmp_path / "swapped.tsv",
        [
            (second["image_id"], 640, 480, first["boxes"], first["features"]),
            (first["image_id"], 640, 480, first["boxes"], first["features"]),
        ],
    )
    with pytest.raises(
        ConversionError, match=rf"image '{second['image_id']}': the features of .*swapped.tsv, line 1 are not"
    ):
        convert(sources["precomp"], tmp_path / "out", splits=["test"], tsv_paths=[swapped])
    report = convert(
        sources["precomp"], tmp_path / "out", splits=["test"], tsv_paths=[swapped], skip_bad=True
    )
    skipped = {s["image_id"]: s["reason"] for s in report.skipped}
    assert len(skipped) == 3  # the swapped image and the two test images without any TSV row
    assert all("no TSV row" in r for i, r in skipped.items() if i != second["image_id"])


def test_entities_sentences_that_disagree_with_the_captions_name_the_image_and_caption(
    corpus, sources, tmp_path
):
    image_id = corpus["test"][1]["image_id"]
    path = sources["entities"] / "Sentences" / f"{image_id}.txt"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("]", "] extra words", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ConversionError, match=rf"image '{image_id}', caption 3: the corpus has .*{image_id}.txt has"
    ):
        convert(
            sources["precomp"],
            tmp_path / "out",
            splits=["test"],
            entities_dir=sources["entities"],
            karpathy_path=sources["karpathy"],
        )


def test_an_entities_file_for_an_image_outside_the_corpus_is_an_error(sources, tmp_path):
    (sources["entities"] / "Sentences" / "999999.txt").write_text("[/EN#1/people A man] .\n")
    with pytest.raises(
        ConversionError, match=r"999999.txt: Entities file for image '999999', which is in none"
    ):
        convert(
            sources["precomp"],
            tmp_path / "out",
            karpathy_path=sources["karpathy"],
            entities_dir=sources["entities"],
        )


def test_float16_storage_halves_the_feature_bytes(sources, tmp_path):
    convert(sources["precomp"], tmp_path / "f32", splits=["train"])
    convert(sources["precomp"], tmp_path / "f16", splits=["train"], float16=True)
    full = datasets.load_from_disk(str(tmp_path / "f32"))["train"]
    half = datasets.load_from_disk(str(tmp_path / "f16"))["train"]
    assert half.features["features"].dtype == "float16"
    assert half.data.column("features").nbytes < 0.6 * full.data.column("features").nbytes
    np.testing.assert_allclose(
        half.with_format("numpy")[0]["features"].astype(np.float32),
        full.with_format("numpy")[0]["features"],
        rtol=1e-3,
        atol=1e-3,
    )


def test_split_renaming_and_an_existing_output_folder(sources, tmp_path):
    convert(sources["precomp"], tmp_path / "out", splits=["dev=test", "train"])
    assert sorted(datasets.load_from_disk(str(tmp_path / "out"))) == ["test", "train"]
    with pytest.raises(ConversionError, match="already exists and is not an empty folder"):
        convert(sources["precomp"], tmp_path / "out")
    with pytest.raises(ConversionError, match="several precomp splits map to corpus split"):
        convert(sources["precomp"], tmp_path / "out2", splits=["dev=test", "test"])


def test_the_cli_prints_one_line_errors_and_a_summary(sources, tmp_path, capsys):
    assert main(["convert", "scan-precomp", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "no {split}_ims.npy" in capsys.readouterr().err
    code = main(
        [
            "convert",
            "scan-precomp",
            str(sources["precomp"]),
            str(tmp_path / "out"),
            "--split",
            "test",
            "--karpathy",
            str(sources["karpathy"]),
        ]
    )
    assert code == 0
    assert "test 4 images" in capsys.readouterr().out


def test_the_schema_validator_requires_one_caption_id_per_caption():
    features = corpus_features(DIM, with_boxes=False, with_phrases=False, with_caption_ids=True)
    del features["image_size"]
    row = {"image_id": "1", "features": np.zeros((2, DIM), np.float32), "captions": ["a", "b"]}
    good = datasets.Dataset.from_list([{**row, "caption_ids": ["7", "8"]}], features=features)
    validate_corpus(good, "test")
    bad = datasets.Dataset.from_list([{**row, "caption_ids": ["7"]}], features=features)
    with pytest.raises(
        ValueError, match=r"column 'caption_ids', row 0 \(image_id '1'\): 1 caption ids but 2"
    ):
        validate_corpus(bad, "test")


@pytest.mark.parametrize("count", [0, -1, 2.5, True])
def test_captions_per_image_must_be_a_positive_integer(count):
    with pytest.raises(ConversionError, match=r"captions_per_image must be"):
        ConversionOptions(captions_per_image=count)
