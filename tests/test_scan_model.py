"""SCAN scores against an independent reference written from docs/spec.md section 2, pair by pair."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from references import pool, relevances, scan_attention

from modeling_ccr import ScanConfig, ScanModel


def reference_scan_score(image, caption, direction, aggregation, lambda1, lambda2, norm):
    """One image `(n, D)` (valid regions only) against one caption `(m, D)` (valid words only)."""
    queries, keys = (caption, image) if direction == "t2i" else (image, caption)
    attention = scan_attention(queries, keys, lambda1, norm)
    return pool(relevances(queries, keys, attention), aggregation, lambda2)


def padded_batch(n_images=3, n_captions=4, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n_regions = [5, 3, 4][:n_images]
    n_words = [6, 2, 4, 5][:n_captions]
    images = torch.zeros(n_images, max(n_regions), dim, dtype=torch.float64)
    region_mask = torch.zeros(n_images, max(n_regions), dtype=torch.bool)
    for i, n in enumerate(n_regions):
        images[i, :n] = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)
        region_mask[i, :n] = True
    texts = torch.zeros(n_captions, max(n_words), dim, dtype=torch.float64)
    word_mask = torch.zeros(n_captions, max(n_words), dtype=torch.bool)
    for c, m in enumerate(n_words):
        texts[c, :m] = F.normalize(torch.randn(m, dim, generator=generator, dtype=torch.float64), dim=-1)
        word_mask[c, :m] = True
    return images, region_mask, texts, word_mask


def tiny_config(**overrides):
    values = dict(feature_dim=12, embed_dim=8, vocab_size=30, word_dim=6)
    values.update(overrides)
    return ScanConfig(**values)


SETTINGS = list(
    itertools.product(
        ("t2i", "i2t"), ("avg", "lse", "max", "sum"), ("clipped_l2norm", "l2norm", "softmax", "none")
    )
)


@pytest.mark.parametrize("direction,aggregation,norm", SETTINGS)
def test_scores_match_the_reference_for_every_pair(direction, aggregation, norm):
    model = ScanModel(tiny_config(direction=direction, aggregation=aggregation, attention_norm=norm)).double()
    images, region_mask, texts, word_mask = padded_batch()
    scores = model.score_pairs(images, region_mask, texts, word_mask)
    for i, c in itertools.product(range(images.shape[0]), range(texts.shape[0])):
        expected = reference_scan_score(
            images[i, region_mask[i]], texts[c, word_mask[c]], direction, aggregation, 9.0, 6.0, norm
        )
        torch.testing.assert_close(scores[i, c], expected, rtol=1e-9, atol=1e-9)


def test_padded_batch_gives_the_scores_of_items_scored_one_by_one():
    model = ScanModel(tiny_config(direction="i2t", aggregation="lse")).double()
    images, region_mask, texts, word_mask = padded_batch()
    batch_scores = model.score_pairs(images, region_mask, texts, word_mask)
    for i, c in itertools.product(range(images.shape[0]), range(texts.shape[0])):
        alone = model.score_pairs(
            images[i : i + 1, region_mask[i]],
            region_mask[i : i + 1, region_mask[i]],
            texts[c : c + 1, word_mask[c]],
            word_mask[c : c + 1, word_mask[c]],
        )
        torch.testing.assert_close(batch_scores[i, c], alone[0, 0], rtol=1e-12, atol=1e-12)


def test_padded_regions_and_words_receive_no_attention():
    for direction in ("t2i", "i2t"):
        model = ScanModel(tiny_config(direction=direction)).double()
        images, region_mask, texts, word_mask = padded_batch(n_images=3, n_captions=3)
        attention = model.matched_attention(images, region_mask, texts, word_mask)[0].attention
        query_mask, key_mask = (word_mask, region_mask) if direction == "t2i" else (region_mask, word_mask)
        assert torch.all(attention[~query_mask] == 0)
        assert torch.all(attention.transpose(1, 2)[~key_mask] == 0)
        row_sums = attention.sum(-1)[query_mask]
        torch.testing.assert_close(row_sums, torch.ones_like(row_sums))


def random_inputs(config, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, 6, config.feature_dim, generator=generator)
    region_mask = torch.ones(batch, 6, dtype=torch.bool)
    region_mask[1, 4:] = False
    input_ids = torch.randint(4, config.vocab_size, (batch, 7), generator=generator)
    attention_mask = torch.ones(batch, 7, dtype=torch.long)
    attention_mask[2, 3:] = 0
    return features, region_mask, input_ids, attention_mask


def test_text_encoder_ignores_what_follows_the_padding():
    config = tiny_config()
    model = ScanModel(config).eval()
    features, region_mask, input_ids, attention_mask = random_inputs(config)
    changed = input_ids.clone()
    changed[2, 3:] = 5  # padded positions of caption 2
    with torch.no_grad():
        a = model(features, region_mask, input_ids, attention_mask).logits_per_image
        b = model(features, region_mask, changed, attention_mask).logits_per_image
    torch.testing.assert_close(a, b)


def test_feature_size_not_matching_the_config_is_rejected():
    config = tiny_config()
    features, region_mask, input_ids, attention_mask = random_inputs(config)
    with pytest.raises(ValueError, match="feature_dim=12"):
        ScanModel(config)(features[..., :5], region_mask, input_ids, attention_mask)


def test_nan_features_are_rejected():
    config = tiny_config()
    features, region_mask, input_ids, attention_mask = random_inputs(config)
    features[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ScanModel(config)(features, region_mask, input_ids, attention_mask)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(direction="both"), "direction"),
        (dict(aggregation="mean"), "aggregation"),
        (dict(attention_norm="l1"), "attention_norm"),
        (dict(lambda_softmax=0.0), "lambda_softmax"),
        (dict(embed_dim=-3), "embed_dim"),
    ],
)
def test_invalid_config_values_are_rejected_naming_the_option(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)
