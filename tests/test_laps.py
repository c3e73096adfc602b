"""LAPS (Fu et al., CVPR 2024) against an independent float64 reference written from the paper and from
reading its released code (lib/cross_net.py, lib/xttn.py): one image-caption pair at a time, with the
selection written as a sort, the kept and dropped patches gathered, the aggregation MLP written out from
the weights, and the alignment as the max/mean of leaky-ReLU cosines. Nothing here calls our modules
except to read the weights and to run the model under test."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_ccr import BACKBONES
from modeling_ccr.models.configuration_laps import LapsConfig
from modeling_ccr.models.modeling_laps import LapsModel

TINY = dict(feature_dim=12, embed_dim=8, vocab_size=40, word_dim=6)


def cosine(a, b):
    return (a @ b) / (a.norm() * b.norm())


def reference_aggregation(model, kept):
    """LAPS's TokenAggregation on the gathered kept patches `(k, D)` -> `(N_s, D)`."""
    agg = model.aggregation
    mean = kept.mean(dim=-1, keepdim=True)
    variance = ((kept - mean) ** 2).mean(dim=-1, keepdim=True)
    normed = (kept - mean) / torch.sqrt(variance + agg.norm.eps) * agg.norm.weight + agg.norm.bias
    hidden = normed @ agg.hidden.weight.T + agg.hidden.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU
    logits = (hidden @ agg.output.weight.T + agg.output.bias).T * agg.scale  # (N_s, k)
    return (
        torch.exp(logits - logits.max(dim=1, keepdim=True).values).div(
            torch.exp(logits - logits.max(dim=1, keepdim=True).values).sum(dim=1, keepdim=True)
        )
        @ kept
    )


def reference_tokens(model, image, region_mask, caption, word_mask):
    """The slimmed tokens of one pair (unnormalised) and the kept patch indices (among valid spatial ones)."""
    config = model.config
    regions = image[region_mask]
    words = caption[word_mask]
    cls = None
    if config.cls_token:
        cls, regions = regions[:1], regions[1:]
    n = len(regions)
    with torch.no_grad():
        image_mean, caption_mean = regions.mean(dim=0), words.mean(dim=0)
        score = [float(cosine(image_mean, p) + cosine(caption_mean, p)) for p in regions]
    order = sorted(range(n), key=lambda j: (-score[j], j))
    n_keep = math.ceil(n * config.keep_ratio)
    keep, drop = order[:n_keep], order[n_keep:]
    tokens = [reference_aggregation(model, regions[keep])]
    if drop:
        dropped_scores = torch.tensor([score[j] for j in drop], dtype=image.dtype)
        weights = torch.exp(dropped_scores) / torch.exp(dropped_scores).sum()
        tokens.append((weights[:, None] * regions[drop]).sum(dim=0, keepdim=True))
    if cls is not None:
        tokens.insert(0, cls)
    return torch.cat(tokens), keep


def laps_reference(model, image, region_mask, caption, word_mask):
    """LAPS's score of one pair: image `(n_regions, D)` raw patch embeddings, caption `(n_words, D)` raw
    word embeddings, with their bool masks."""
    config = model.config
    tokens, _ = reference_tokens(model, image, region_mask, caption, word_mask)
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    words = caption[word_mask]
    words = words / words.norm(dim=-1, keepdim=True)
    sims = words @ tokens.T
    sims = torch.where(sims > 0, sims, config.leaky_slope * sims)
    total = 0.0
    if config.direction in ("t2i", "both"):
        total = total + sims.max(dim=1).values.mean()
    if config.direction in ("i2t", "both"):
        total = total + sims.max(dim=0).values.mean()
    return total


def build(seed=0, **options):
    torch.manual_seed(seed)
    model = LapsModel(LapsConfig(**{**TINY, "num_patches": 6, "aggregation_ratio": 0.7, **options}))
    # Away from the initialisation (scale 1, centred LayerNorm), so every weight shows in the scores.
    with torch.no_grad():
        for parameter in model.aggregation.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model.double().eval()


def raw_embeddings(n_images=3, n_regions=7, n_captions=4, n_words=6, dim=8, seed=0):
    """Unnormalised embeddings (norms vary, so the means are not those of unit vectors) with padded
    regions (one in the middle) and words."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, n_regions, dim, generator=generator, dtype=torch.float64)
    images = images * (0.5 + 2 * torch.rand(n_images, n_regions, 1, generator=generator, dtype=torch.float64))
    region_mask = torch.ones(n_images, n_regions, dtype=torch.bool)
    region_mask[1, 5:] = False
    region_mask[2, 3] = False
    texts = torch.randn(n_captions, n_words, dim, generator=generator, dtype=torch.float64) + 0.3
    word_mask = torch.ones(n_captions, n_words, dtype=torch.bool)
    for caption, length in enumerate((6, 2, 4, 5)[:n_captions]):
        word_mask[caption, length:] = False
    return images * region_mask[..., None], region_mask, texts * word_mask[..., None], word_mask


def reference_matrix(model, images, region_mask, texts, word_mask):
    return torch.stack(
        [
            torch.stack(
                [
                    laps_reference(model, images[i], region_mask[i], texts[c], word_mask[c])
                    for c in range(len(texts))
                ]
            )
            for i in range(len(images))
        ]
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"direction": "t2i"},
        {"direction": "i2t"},
        {"keep_ratio": 0.8, "aggregation_ratio": 0.6},
        {"keep_ratio": 1.0},  # nothing dropped: no fused token
        {"cls_token": True},
        {"leaky_slope": 0.3, "keep_ratio": 0.3, "aggregation_ratio": 1.0},
    ],
)
def test_scores_equal_the_float64_reference_with_padding(options):
    model = build(**options)
    images, region_mask, texts, word_mask = raw_embeddings()
    scores = model.score_pairs(images, region_mask, texts, word_mask)
    expected = reference_matrix(model, images, region_mask, texts, word_mask)
    assert scores.shape == (3, 4)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
    # Both directions are present in the default score: each alone is a different number.
    if not options:
        t2i = build(direction="t2i").score_pairs(images, region_mask, texts, word_mask)
        assert (scores - t2i).abs().min() > 1e-3


def test_extra_padding_changes_nothing():
    model = build()
    images, region_mask, texts, word_mask = raw_embeddings()
    scores = model.score_pairs(images, region_mask, texts, word_mask)
    padded = model.score_pairs(
        F.pad(images, (0, 0, 0, 3)),
        F.pad(region_mask, (0, 3)),
        F.pad(texts, (0, 0, 0, 2)),
        F.pad(word_mask, (0, 2)),
    )
    torch.testing.assert_close(padded, scores, rtol=0, atol=1e-12)


def test_selection_depends_on_the_caption():
    model = build()
    images, region_mask, texts, word_mask = raw_embeddings(n_regions=7)
    slimmed = model.slim(images, region_mask, texts, word_mask)
    for i in range(3):
        for c in range(4):
            _, keep = reference_tokens(model, images[i], region_mask[i], texts[c], word_mask[c])
            valid = region_mask[i].nonzero().squeeze(1)
            assert set(valid[keep].tolist()) == set(slimmed.kept[i, c].nonzero().squeeze(1).tolist())
    # Some image keeps different patches for different captions (the linguistic-aware part).
    assert any(not torch.equal(slimmed.kept[i, 0], slimmed.kept[i, c]) for i in range(3) for c in range(1, 4))


@pytest.mark.parametrize(
    ("options", "n_aggregated", "n_kept"),
    [
        ({"num_patches": 196, "keep_ratio": 0.5, "aggregation_ratio": 0.4}, 39, 98),  # ViT-B/16 at 224 px
        ({"num_patches": 49, "keep_ratio": 0.8, "aggregation_ratio": 0.6}, 23, 40),  # Swin-B at 224 px
    ],
)
def test_published_settings_keep_and_aggregate_as_their_code(options, n_aggregated, n_kept):
    config = LapsConfig(**{**TINY, **options})
    assert config.aggregated_tokens == n_aggregated
    model = LapsModel(config).double().eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, options["num_patches"], 8, generator=generator, dtype=torch.float64)
    texts = torch.randn(2, 5, 8, generator=generator, dtype=torch.float64)
    region_mask = torch.ones(2, options["num_patches"], dtype=torch.bool)
    word_mask = torch.ones(2, 5, dtype=torch.bool)
    slimmed = model.slim(images, region_mask, texts, word_mask)
    assert (slimmed.kept.sum(dim=-1) == n_kept).all()
    assert slimmed.tokens.shape == (2, 2, n_aggregated + 1, 8)
    expected = reference_matrix(model, images, region_mask, texts, word_mask)
    torch.testing.assert_close(
        model.score_pairs(images, region_mask, texts, word_mask), expected, rtol=0, atol=1e-5
    )


def test_gradient_equals_the_reference_gradient_and_the_ranking_has_none():
    model = build()
    images, region_mask, texts, word_mask = raw_embeddings()
    ours_images, ours_texts = images.clone().requires_grad_(), texts.clone().requires_grad_()
    model.score_pairs(ours_images, region_mask, ours_texts, word_mask).sum().backward()
    ours = [ours_images.grad, ours_texts.grad] + [p.grad.clone() for p in model.aggregation.parameters()]
    model.zero_grad()
    ref_images, ref_texts = images.clone().requires_grad_(), texts.clone().requires_grad_()
    reference_matrix(model, ref_images, region_mask, ref_texts, word_mask).sum().backward()
    expected = [ref_images.grad, ref_texts.grad] + [p.grad for p in model.aggregation.parameters()]
    for found, wanted in zip(ours, expected, strict=True):
        # Our norms add 1e-8 (NORM_EPS), the reference uses exact norms: differences of order 1e-8.
        torch.testing.assert_close(found, wanted, rtol=0, atol=1e-6)
    assert ours_images.grad.abs().sum() > 0 and ours_texts.grad.abs().sum() > 0
    assert model.aggregation.scale.grad.abs() > 0 and model.aggregation.hidden.weight.grad.abs().sum() > 0


def test_training_gradient_reaches_every_encoder_and_the_aggregation():
    torch.manual_seed(0)
    model = LapsModel(LapsConfig(**TINY, num_patches=5))
    features = torch.randn(4, 5, 12)
    region_mask = torch.ones(4, 5, dtype=torch.bool)
    region_mask[1, 3:] = False
    input_ids = torch.randint(3, 40, (4, 6))
    attention_mask = torch.ones(4, 6, dtype=torch.long)
    attention_mask[2, 4:] = 0
    output = model(
        features * region_mask[..., None],
        region_mask,
        input_ids * attention_mask,
        attention_mask,
        return_loss=True,
    )
    output.loss.backward()
    for name, parameter in model.named_parameters():
        if name == "aggregation.output.bias":  # a per-token constant over the patches: softmax-invariant
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_slimmed_attention_composes_the_word_choice_with_the_mixing():
    model = build()
    images, region_mask, texts, word_mask = raw_embeddings(n_images=4, n_captions=4)
    (view,) = model.matched_attention(images, region_mask, texts, word_mask)
    assert view.attention.shape == (4, 6, 7)
    torch.testing.assert_close(
        view.attention.sum(dim=-1)[word_mask], torch.ones(int(word_mask.sum()), dtype=torch.float64)
    )
    assert (view.attention.masked_select(~region_mask[:, None, :].expand_as(view.attention)) == 0).all()
    content = view.attention @ view.keys
    for i in range(4):
        tokens, _ = reference_tokens(model, images[i], region_mask[i], texts[i], word_mask[i])
        words = texts[i][word_mask[i]]
        best = (F.normalize(words, dim=-1) @ F.normalize(tokens, dim=-1).T).argmax(dim=1)
        # 1e-8: the fused token's weights are softmaxed cosines, whose norms carry our 1e-8 eps.
        torch.testing.assert_close(content[i][word_mask[i]], tokens[best], rtol=0, atol=1e-8)


def test_patch_attention_is_each_words_best_patch_by_cosine_both_ways():
    model = build(constraint_attention="patches")
    images, region_mask, texts, word_mask = raw_embeddings(n_images=4, n_captions=4)
    views = model.matched_attention(images, region_mask, texts, word_mask)
    assert [v.attention.shape for v in views] == [(4, 6, 7), (4, 7, 6)]
    for i in range(4):
        cosines = F.normalize(texts[i], dim=-1) @ F.normalize(images[i], dim=-1).T
        cosines = cosines.masked_fill(~region_mask[i], float("-inf"))
        for t in word_mask[i].nonzero().squeeze(1).tolist():
            assert views[0].attention[i, t].argmax() == cosines[t].argmax()
            assert views[0].attention[i, t].max() == 1


def test_constraints_train_on_the_slimmed_attention():
    torch.manual_seed(0)
    model = LapsModel(LapsConfig(**TINY, num_patches=5, ccr_weight=0.5, ccs_weight=0.5))
    features = torch.randn(4, 5, 12)
    region_mask = torch.ones(4, 5, dtype=torch.bool)
    input_ids = torch.randint(3, 40, (4, 6))
    attention_mask = torch.ones(4, 6, dtype=torch.long)
    output = model(features, region_mask, input_ids, attention_mask, return_loss=True, output_attentions=True)
    assert output.ccr_loss > 0 and torch.isfinite(output.ccs_loss)
    (output.ccr_loss + output.ccs_loss).backward()
    assert model.aggregation.hidden.weight.grad.abs().sum() > 0  # the mixing weights are trained by them


def test_on_a_vision_towers_patch_tokens():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    config = LapsConfig(
        **{**TINY, "feature_dim": 1},
        num_patches=100,
        vision_tower={"architecture": "test_vit", "image_size": 160},
    )
    model = LapsModel(config).eval()
    assert model.config.feature_dim == 64  # the tower's width
    pixels = torch.randn(2, 3, 160, 160)
    input_ids = torch.randint(3, 40, (2, 5))
    attention_mask = torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        output = model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels, output_attentions=True
        )
        patches, mask, _ = model.get_image_regions(pixels)
    assert patches.shape == (2, 100, 8)  # a 10 x 10 patch grid
    assert output.attentions.shape == (2, 5, 100)
    expected = reference_matrix(
        model.double(),
        patches.double(),
        mask,
        model.get_text_features(input_ids, attention_mask).double(),
        attention_mask.bool(),
    )
    torch.testing.assert_close(output.logits_per_image.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"aggregation_ratio": -0.1}, "aggregation_ratio"),
        ({"num_patches": 2, "aggregation_ratio": 0.4}, "num_patches"),
        ({"direction": "sideways"}, "direction"),
        ({"constraint_attention": "soft"}, "constraint_attention"),
    ],
)
def test_bad_options_are_refused_naming_the_field(options, field):
    with pytest.raises(Exception, match=field):
        LapsConfig(**{**TINY, **options})


def test_cls_token_needs_a_valid_first_region():
    model = build(cls_token=True)
    images, region_mask, texts, word_mask = raw_embeddings()
    region_mask[0, 0] = False
    with pytest.raises(ValueError, match="cls_token"):
        model.score_pairs(images, region_mask, texts, word_mask)


def test_registered_and_reloads_with_identical_scores(tmp_path):
    assert BACKBONES["laps"] == (LapsConfig, LapsModel)
    model = build(cls_token=True).float()
    model.save_pretrained(tmp_path)
    reloaded = LapsModel.from_pretrained(tmp_path).eval()
    images, region_mask, texts, word_mask = (
        t.float() if t.is_floating_point() else t for t in raw_embeddings()
    )
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.score_pairs(images, region_mask, texts, word_mask),
            model.score_pairs(images, region_mask, texts, word_mask),
        )
