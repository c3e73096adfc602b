"""VSE-infinity end to end against a float64 reference written from its paper and code: region features
-> fc(x) + MLP(x) (batch norm on the real regions) -> GPO -> l2; words -> GPO -> l2; cosine, in both
retrieval directions, with padded regions and words."""

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from test_pooling import reference_gpo

from modeling_ccr.models.configuration_vse_infty import VseInftyConfig
from modeling_ccr.models.modeling_vse_infty import VseInftyModel

TINY = dict(feature_dim=10, embed_dim=8, vocab_size=30, word_dim=6)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return VseInftyModel(VseInftyConfig(**{**TINY, **overrides})).double()


def raw_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(3, 5, 10, generator=generator, dtype=torch.float64)
    region_mask = torch.ones(3, 5, dtype=torch.bool)
    region_mask[1, 3:] = False
    region_mask[2, 1] = False
    input_ids = torch.randint(3, 30, (3, 6), generator=generator)
    attention_mask = torch.ones(3, 6, dtype=torch.long)
    attention_mask[0, 4:] = 0
    attention_mask[2, 2:] = 0
    return features * region_mask[..., None], region_mask, input_ids * attention_mask, attention_mask


def reference_regions(model, features, region_mask, training):
    """fc(x) + Linear2(ReLU(BN(Linear1(x)))) of the real regions, image by image; BN statistics from the
    real regions of the whole batch in training, the running ones in eval."""
    fc, mlp = model.region_encoder.projection, model.region_mlp
    real = [features[i][region_mask[i]] for i in range(len(features))]
    hidden = [x @ mlp.hidden.weight.T.double() + mlp.hidden.bias for x in real]
    if training:
        stacked = torch.cat(hidden)
        mean, var = stacked.mean(0), stacked.var(0, unbiased=False)
    else:
        mean, var = mlp.norm.running_mean, mlp.norm.running_var
    out = []
    for x, h in zip(real, hidden, strict=True):
        h = (h - mean) / torch.sqrt(var + mlp.norm.eps) * mlp.norm.weight + mlp.norm.bias
        out.append(x @ fc.weight.T + fc.bias + torch.relu(h) @ mlp.output.weight.T + mlp.output.bias)
    return out


def reference_logits(model, features, region_mask, input_ids, attention_mask, training=False):
    regions = reference_regions(model, features, region_mask, training)
    with torch.no_grad():
        words = model.get_text_features(input_ids, attention_mask)
    images = torch.stack(
        [
            F.normalize(reference_gpo(model.region_pooling, r, torch.ones(len(r), dtype=torch.bool)), dim=0)
            for r in regions
        ]
    )
    captions = torch.stack(
        [
            F.normalize(reference_gpo(model.word_pooling, w, m.bool()), dim=0)
            for w, m in zip(words, attention_mask, strict=True)
        ]
    )
    return images @ captions.T


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_scores_equal_the_float64_reference_in_both_directions(training):
    model = tiny_model()
    model.train(training)
    batch = raw_batch()
    with torch.no_grad():
        out = model(*batch)
    expected = reference_logits(model, *batch, training=training)
    torch.testing.assert_close(out.logits_per_image, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits_per_text, expected.T, rtol=0, atol=1e-5)


def test_padded_regions_stay_out_of_the_batch_norm_statistics():
    model = tiny_model().train()
    features, region_mask, _, _ = raw_batch()
    # Padded regions filled with large values: if they reached the statistics, the scores would move.
    noisy = features.masked_fill(~region_mask[..., None], 100.0)
    with torch.no_grad():
        clean = model.get_image_features(features, region_mask)
        model.region_mlp.norm.reset_running_stats()
        dirty = model.get_image_features(noisy, region_mask)
    torch.testing.assert_close(dirty, clean)


def test_without_the_region_mlp_the_regions_are_the_linear_projection():
    model = tiny_model(region_mlp=False).eval()
    features, region_mask, _, _ = raw_batch()
    projection = model.region_encoder.projection
    expected = (features @ projection.weight.T + projection.bias) * region_mask[..., None]
    torch.testing.assert_close(model.get_image_features(features, region_mask), expected)
    assert not any("region_mlp" in name for name, _ in model.named_parameters())


def test_the_published_defaults_pool_unnormalised_embeddings_and_refuse_constraints():
    config = VseInftyConfig()
    assert (config.normalize_regions, config.normalize_words) == (False, False)
    assert (config.gpo_position_dim, config.gpo_hidden_dim, config.gpo_temperature) == (32, 32, 0.1)
    with pytest.raises(StrictDataclassClassValidationError, match="no cross-attention"):
        VseInftyConfig(ccr_weight=0.1)
    with pytest.raises(StrictDataclassClassValidationError, match="gpo_position_dim"):
        VseInftyConfig(gpo_position_dim=7)


def test_the_bert_text_variant_pools_projected_token_states():
    bert = dict(
        model_type="bert",
        vocab_size=30,
        hidden_size=12,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    model = tiny_model(text_encoder_name="bert-base-uncased", text_encoder_config=bert).eval()
    features, region_mask, input_ids, attention_mask = raw_batch()
    with torch.no_grad():
        out = model(features, region_mask, input_ids, attention_mask)
        words = model.text_encoder.projection(
            model.text_encoder.transformer(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
        )
    caption = F.normalize(reference_gpo(model.word_pooling, words[0], attention_mask[0].bool()), dim=0)
    image = F.normalize(model.region_pooling(out.image_embeds[:1], region_mask[:1])[0], dim=0)
    torch.testing.assert_close(out.logits_per_image[0, 0], image @ caption, rtol=0, atol=1e-5)


def test_gallery_scoring_pools_each_item_once_and_equals_the_pair_scores():
    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(7, 5, model.config.embed_dim, generator=generator, dtype=torch.float64)
    region_mask = torch.ones(7, 5, dtype=torch.bool)
    region_mask[2, 3:] = False
    texts = torch.randn(9, 6, model.config.embed_dim, generator=generator, dtype=torch.float64)
    word_mask = torch.arange(6).expand(9, 6) < torch.tensor([6, 2, 4, 1, 6, 3, 5, 2, 6]).unsqueeze(1)
    pooled = []
    hook = model.region_pooling.register_forward_hook(lambda module, args, out: pooled.append(len(args[0])))
    with torch.no_grad():
        scores = model.similarity(images, region_mask, texts, word_mask, image_block=4, caption_block=4)
        hook.remove()
        expected = torch.stack(
            [
                model.score_pairs(images[i : i + 1], region_mask[i : i + 1], texts, word_mask)[0]
                for i in range(7)
            ]
        )
    # Two blocks of images (4 + 3), each pooled once, however many blocks of captions the gallery has.
    assert pooled == [4, 3]
    torch.testing.assert_close(scores, expected.float(), rtol=1e-5, atol=1e-6)
