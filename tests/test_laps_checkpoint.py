"""`ccr convert-checkpoint` on checkpoints in LAPS's layout (CrossmodalGroup/LAPS `train.py`).

LAPS saves `{'model': VSEModel.state_dict(), 'opt': Namespace, 'epoch', 'best_rsum', 'Eiters'}`: one state
dict whose image encoder is a transformers ViTModel or SwinModel (saved with transformers 4.x names), its text
encoder a BERT, plus the aggregation MLP of its patch slimming. The tests build small ViT / Swin models with
today's transformers, write their weights under the 4.x names, and compare the converted model's scores with
LAPS's formula computed in float64 from the ORIGINAL tensors, the transformers encoders run as LAPS runs them.
"""

from __future__ import annotations

import argparse
import math
import re

import pytest
import torch
import torch.nn.functional as F
from test_original_checkpoints import bert_folder, bert_text_state
from transformers import AutoModel, AutoTokenizer

import modeling_ccr  # noqa: F401  (registers the backbones)
from modeling_ccr.artifacts.original_checkpoints import ConversionError, convert_checkpoint, write_conversion
from modeling_ccr.cli import main

pytest.importorskip("timm")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EMBED_DIM = 16
CAPTIONS = ["a dog runs", "the man with a red ball", "a man on the grass runs"]
# kind -> (timm name, the transformers config of that shape, num_patches, sparse_ratio, aggr_ratio): the tiny
# towers the tests use, and the sizes LAPS loads (google/vit-base-patch16-224-in21k, microsoft/swin-base-...).
TOWERS = {
    "vit": (
        "vit_tiny_patch16_224",
        dict(hidden_size=192, num_attention_heads=3, intermediate_size=768),
        196,
        0.5,
        0.4,
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
        49,
        0.8,
        0.6,
    ),
}
PUBLISHED_TOWERS = {
    "vit": ("vit_base_patch16_224", {}, 196, 0.5, 0.4),
    "swin": (
        "swin_base_patch4_window7_224",
        dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
        49,
        0.8,
        0.6,
    ),
}
LAPS_OPTIONS = {
    "embed_size": EMBED_DIM, "margin": 0.2, "max_violation": False, "vse_mean_warmup_epochs": 1, "loss": "vse",
    "img_res": 224, "attention_weight": 0.8, "ratio_weight": 2.0, "lr_schedules": [9, 15, 20, 25],
    "decay_rate": 0.3, "learning_rate": 2e-4, "num_epochs": 30, "batch_size": 64,
}  # fmt: skip


def transformers_tower(kind: str, shape: dict, gen: torch.Generator):
    """A random transformers ViTModel / SwinModel of `shape` (patch 16 / window 7 at 224 px), every weight
    perturbed."""
    from transformers import SwinConfig, SwinModel, ViTConfig, ViTModel

    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))  # transformers' own init draws
    if kind == "vit":
        model = ViTModel(ViTConfig(**shape, layer_norm_eps=1e-12))
    else:
        model = SwinModel(SwinConfig(**shape, window_size=7))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=gen) * 0.05)
    return model.eval()


# transformers 5 names -> the 4.x names a LAPS checkpoint holds (LAPS asks for transformers >= 4.32): the
# query/key/value owner differs (ViT `attention.attention`, Swin `attention.self`), the rest is shared.
def legacy_renames(owner: str) -> tuple[tuple[str, str], ...]:
    return (
        (r"attention\.q_proj", f"{owner}.query"),
        (r"attention\.k_proj", f"{owner}.key"),
        (r"attention\.v_proj", f"{owner}.value"),
        (r"attention\.o_proj", "attention.output.dense"),
        (r"mlp\.fc1", "intermediate.dense"),
        (r"mlp\.fc2", "output.dense"),
    )


LEGACY_VIT = ((r"^layers\.(\d+)\.", r"encoder.layer.\1."), *legacy_renames("attention.attention"))
LEGACY_SWIN = (
    (r"attention\.relative_position_bias\.relative_position_", "attention.self.relative_position_"),
    *legacy_renames("attention.self"),
)


def legacy_state(kind: str, tower) -> dict[str, torch.Tensor]:
    """The tower's weights as transformers 4.x saved them (Swin's relative_position_index was persistent)."""
    state = dict(tower.state_dict())
    if kind == "swin":
        state |= {k: v for k, v in tower.named_buffers() if k.endswith("relative_position_index")}
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in LEGACY_VIT if kind == "vit" else LEGACY_SWIN:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value.clone()
    return renamed


def linear(out_dim: int, in_dim: int, gen: torch.Generator, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}weight": torch.randn(out_dim, in_dim, generator=gen) / math.sqrt(in_dim),
        f"{prefix}bias": torch.randn(out_dim, generator=gen) * 0.1,
    }


def laps_checkpoint(tmp_path, kind: str, seed: int = 0, towers: dict = TOWERS, **option_changes):
    """A LAPS `model_best.pth` (its layout: one state dict, argparse options), its parts and options."""
    folder, bert_config = bert_folder(tmp_path)
    gen = torch.Generator().manual_seed(seed)
    architecture, shape, num_patches, sparse, aggr = towers[kind]
    tower = transformers_tower(kind, shape, gen)
    width = tower.config.hidden_size if kind == "vit" else tower.num_features
    n_tokens, hidden = int(num_patches * aggr * sparse), int(EMBED_DIM * 0.2)
    image = {f"visual_encoder.{k}": v for k, v in legacy_state(kind, tower).items()}
    image |= linear(EMBED_DIM, width, gen, "vision_proj.")
    text = {k: v for k, v in bert_text_state(bert_config, gen).items() if not k.startswith("linear.")}
    text |= linear(EMBED_DIM, bert_config.hidden_size, gen, "fc.")
    cross = {
        "aggr_net.weight.0.weight": 1 + 0.1 * torch.randn(EMBED_DIM, generator=gen),
        "aggr_net.weight.0.bias": 0.1 * torch.randn(EMBED_DIM, generator=gen),
        "aggr_net.scale": torch.full((1, 1, 1), 1.3),
    }
    cross |= linear(hidden, EMBED_DIM, gen, "aggr_net.weight.1.") | linear(
        n_tokens, hidden, gen, "aggr_net.weight.3."
    )
    options = {
        **LAPS_OPTIONS, "vit_type": kind, "num_patches": num_patches, "sparse_ratio": sparse, "aggr_ratio": aggr,
        **option_changes,
    }  # fmt: skip
    parts = {"img_enc": image, "txt_enc": text, "cross_net": cross}
    state = {f"{part}.{key}": value for part, tensors in parts.items() for key, value in tensors.items()}
    path = tmp_path / "model_best.pth"
    torch.save(
        {
            "model": state,
            "opt": argparse.Namespace(**options),
            "epoch": 12,
            "best_rsum": 512.3,
            "Eiters": 9000,
        },
        path,
    )
    return path, folder, tower, bert_config, parts, architecture


def laps_scores(patches, captions, cross, sparse, has_cls):
    """LAPS's CrossSparseAggrNet_v2 + mask_xattn_one_text for one image `(n_tokens, C)` per caption
    `(n_words, C)`, float64, written from its code."""
    scores = torch.zeros(len(patches), len(captions), dtype=torch.float64)
    for i, tokens in enumerate(patches):
        cls, spatial = (tokens[:1], tokens[1:]) if has_cls else (None, tokens)
        unit = F.normalize(spatial, dim=-1)
        saliency = unit @ F.normalize(spatial.mean(0), dim=-1)
        for j, words in enumerate(captions):
            score = saliency + unit @ F.normalize(words.mean(0), dim=-1)
            order = score.argsort(descending=True)
            n_kept = math.ceil(len(spatial) * sparse)
            kept, dropped = spatial[order[:n_kept]], spatial[order[n_kept:]]
            extra = (F.softmax(score[order[n_kept:]], dim=0)[:, None] * dropped).sum(0, keepdim=True)
            hidden = F.layer_norm(
                kept, kept.shape[-1:], cross["aggr_net.weight.0.weight"], cross["aggr_net.weight.0.bias"]
            )
            hidden = F.gelu(
                F.linear(hidden, cross["aggr_net.weight.1.weight"], cross["aggr_net.weight.1.bias"])
            )
            mixing = F.linear(hidden, cross["aggr_net.weight.3.weight"], cross["aggr_net.weight.3.bias"]).T
            aggregated = F.softmax(mixing * cross["aggr_net.scale"].reshape(()), dim=1) @ kept
            slimmed = torch.cat([aggregated, extra] if cls is None else [cls, aggregated, extra])
            sim = F.leaky_relu(F.normalize(words, dim=-1) @ F.normalize(slimmed, dim=-1).T, 0.1)
            scores[i, j] = sim.max(1).values.mean() + sim.max(0).values.mean()
    return scores


def original_scores(kind, tower, bert_config, parts, pixels, ids):
    """What LAPS computes: its encoders (transformers ViT / Swin and BERT) and its cross net, float64."""
    from transformers import BertModel

    image, text, cross = ({k: v.double() for k, v in part.items()} for part in parts.values())
    with torch.no_grad():
        hidden = tower.double()(pixels.double()).last_hidden_state
        patches = F.linear(hidden, image["vision_proj.weight"], image["vision_proj.bias"])
        bert = BertModel(bert_config).double().eval()
        bert.load_state_dict(
            {k.removeprefix("bert."): v for k, v in text.items() if k.startswith("bert.")}, strict=False
        )
        captions = []
        for caption in ids:
            tokens = torch.tensor([caption])
            states = bert(input_ids=tokens, attention_mask=(tokens != 0).double())[0][0]
            captions.append(F.linear(states, text["fc.weight"], text["fc.bias"]))
    return laps_scores(patches, captions, cross, TOWERS[kind][3], has_cls=kind == "vit")


def converted_scores(model_dir, pixels):
    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        regions, mask, _ = model.get_image_regions(pixels)
        words = model.get_text_features(tokens["input_ids"], tokens["attention_mask"])
        scores = model.similarity(regions, mask, words, tokens["attention_mask"].bool())
    ids = [[i for i in row if i != 0] for row in tokens["input_ids"].tolist()]
    return scores, ids, model


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_converted_laps_scores_equal_laps_formula_on_its_transformers_encoders(tmp_path, kind):
    path, folder, tower, bert_config, parts, architecture = laps_checkpoint(tmp_path, kind)
    conversion = convert_checkpoint(path, None, text_encoder=folder, vision_architecture=architecture)
    assert conversion.architecture == "laps"
    notes = " | ".join(conversion.provenance["notes"])
    assert "fused query/key/value of 12 attention layers" in notes
    assert ("pooler" in notes) == (kind == "vit")
    assert ("relative_position_index" in notes) == (kind == "swin")
    write_conversion(conversion, tmp_path / "converted")

    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    scores, ids, model = converted_scores(tmp_path / "converted", pixels)
    expected = original_scores(kind, tower, bert_config, parts, pixels, ids)
    torch.testing.assert_close(scores.double(), expected, atol=1e-5, rtol=0)
    assert expected.std() > 1e-3
    config = model.config
    assert (config.cls_token, config.num_patches) == ((True, 196) if kind == "vit" else (False, 49))
    assert config.max_violation and not config.normalize_regions and not config.normalize_words
    processor = model.image_processor()
    assert list(processor.image_mean) == [0.485, 0.456, 0.406]  # LAPS's transform, not this ViT's 0.5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_the_published_vit_b_and_swin_b_convert_with_the_default_towers(tmp_path, kind):
    """At the sizes LAPS loads, without --vision-architecture: the tower opt.vit_type selects takes every tensor."""
    path, folder, tower, bert_config, parts, architecture = laps_checkpoint(
        tmp_path, kind, towers=PUBLISHED_TOWERS
    )
    conversion = convert_checkpoint(path, None, text_encoder=folder)
    assert conversion.model.config.vision_tower["architecture"] == architecture
    write_conversion(conversion, tmp_path / "converted")
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    scores, ids, _ = converted_scores(tmp_path / "converted", pixels)
    expected = original_scores(kind, tower, bert_config, parts, pixels, ids)
    torch.testing.assert_close(scores.double(), expected, atol=1e-5, rtol=0)


def test_the_transformers_vit_eps_matters_and_is_kept(tmp_path):
    """transformers' ViT normalises with eps 1e-12 and timm's with 1e-6: the tower keeps LAPS's."""
    path, folder, *_, architecture = laps_checkpoint(tmp_path, "vit")
    conversion = convert_checkpoint(path, None, text_encoder=folder, vision_architecture=architecture)
    tower = conversion.model.vision_tower
    assert conversion.model.config.vision_tower["layer_norm_eps"] == 1e-12
    assert {m.eps for m in tower.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-12}


def test_the_cli_guesses_laps_and_writes_a_folder_with_its_processor(tmp_path, capsys):
    path, folder, *_, architecture = laps_checkpoint(tmp_path, "swin")
    out = tmp_path / "converted"
    main(["convert-checkpoint", str(path), "--text-encoder", str(folder), "--vision-architecture", architecture,
          "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "architecture: laps (guessed: model is one state dict" in printed
    assert (out / "preprocessor_config.json").is_file() and (out / "conversion.json").is_file()
    assert '"original_code": "CrossmodalGroup/LAPS"' in (out / "conversion.json").read_text()


def rewrite(path, change):
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["model"].pop("img_enc.visual_encoder.encoder.layers.1.blocks.0.attention.self.key.weight"),
         r"model\.img_enc\.visual_encoder\.encoder\.layers\.1\.blocks\.0\.attention\.self\.key\.weight is missing"),
        (lambda c: c["model"]["img_enc.visual_encoder.encoder.layers.0.blocks.1.attention.self.relative_position_index"]
         .fill_(0), r"relative_position_index does not match the window layout"),
        (lambda c: c["model"].__setitem__("decoder.weight", torch.zeros(2)), r"'decoder\.weight'.* not a tensor under"),
        (lambda c: c["model"].__setitem__("cross_net.extra.weight", torch.zeros(2)),
         r"unused original tensors \['model\.cross_net\.extra\.weight'\]"),
        (lambda c: setattr(c["opt"], "loss", "triplet"), r"opt\.loss='triplet' is not supported"),
        (lambda c: setattr(c["opt"], "aggr_ratio", 0.5), r"give 19 aggregated tokens, but .* has 23 rows"),
        (lambda c: setattr(c["opt"], "vit_type", None), r"opt\.vit_type=None must be a string"),
        (lambda c: c["model"]["img_enc.visual_encoder.layernorm.weight"].fill_(float("nan")),
         r"model\.img_enc\.visual_encoder\.layernorm\.weight has 768 NaN"),
    ],
)  # fmt: skip
def test_what_does_not_fit_laps_layout_is_refused_naming_it(tmp_path, change, message):
    path, folder, *_, architecture = laps_checkpoint(tmp_path, "swin")
    rewrite(path, change)
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(path, None, text_encoder=folder, vision_architecture=architecture)


def test_a_tower_of_another_size_is_refused_naming_the_tensor(tmp_path):
    path, folder, *_ = laps_checkpoint(tmp_path, "vit")
    with pytest.raises(ConversionError, match=r"model\.img_enc\.visual_encoder\..* has shape .* expected"):
        convert_checkpoint(path, None, text_encoder=folder, vision_architecture="vit_small_patch16_224")


def test_laps_is_one_state_dict_and_vision_architecture_is_for_laps_only(tmp_path):
    path, folder, *_ = laps_checkpoint(tmp_path, "vit")
    with pytest.raises(
        ConversionError, match=r"chan checkpoints keep `model` as a list of state dicts, this one"
    ):
        convert_checkpoint(path, None, architecture="chan", text_encoder=folder)
    rewrite(path, lambda c: c.__setitem__("model", [{}, {}]))
    with pytest.raises(
        ConversionError, match=r"laps checkpoints keep `model` as one state dict, this one does not"
    ):
        convert_checkpoint(path, None, architecture="laps", text_encoder=folder)
    with pytest.raises(
        ConversionError, match=r"--vision-architecture is for LAPS checkpoints; this one is scan"
    ):
        convert_checkpoint(path, None, architecture="scan", vision_architecture="vit_tiny_patch16_224")
