"""CHAN end to end against a float64 reference written from its paper and code (lib/coding.py, lib/encoders.py):
regions -> fc -> x + MHA(LayerNorm(x)) -> l2; words -> l2; each query's best key, pooled; both directions,
with padded regions and words. And our meaning of CCR/CCS on its hard assignment."""

import math

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from references import chan_pool
from test_vse_infty import raw_batch

from modeling_ccr.models.configuration_chan import ChanConfig
from modeling_ccr.models.modeling_chan import ChanModel, soft_assignment
from modeling_ccr.models.modeling_dvsa import best_region_attention as hard_assignment

TINY = dict(feature_dim=10, embed_dim=8, vocab_size=30, word_dim=6, self_attention_heads=2)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return ChanModel(ChanConfig(**{**TINY, **overrides})).double().eval()


def reference_regions(model, features):
    """One image's real regions (n, feature_dim) -> l2(x + MHA(LN(x))), heads written out."""
    x = features @ model.region_encoder.projection.weight.T + model.region_encoder.projection.bias
    if model.region_attention is None:
        return F.normalize(x, dim=-1)
    norm, mha = model.region_attention.norm, model.region_attention.attention
    normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)
    normed = normed * norm.weight + norm.bias
    dim, heads = x.shape[-1], mha.num_heads
    q, k, v = (
        normed @ w.T + b
        for w, b in zip(mha.in_proj_weight.split(dim), mha.in_proj_bias.split(dim), strict=True)
    )
    head_dim = dim // heads
    outputs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        weights = torch.softmax(q[:, part] @ k[:, part].T / math.sqrt(head_dim), dim=-1)
        outputs.append(weights @ v[:, part])
    attended = torch.cat(outputs, dim=-1) @ mha.out_proj.weight.T + mha.out_proj.bias
    return F.normalize(x + attended, dim=-1)


def reference_logits(model, features, region_mask, input_ids, attention_mask):
    config = model.config
    with torch.no_grad():
        words = model.get_text_features(input_ids, attention_mask)
    images = [reference_regions(model, features[i][region_mask[i]]) for i in range(len(features))]
    captions = [words[c][attention_mask[c].bool()] for c in range(len(words))]
    scores = torch.zeros(len(images), len(captions), dtype=torch.float64)
    for i, regions in enumerate(images):
        for c, caption in enumerate(captions):
            sims = regions @ caption.T  # (regions, words)
            if "t2i" in config.directions:  # visual hard assignment: each word's best region
                scores[i, c] += chan_pool(sims.max(dim=0).values, config.pooling, config.pooling_temperature)
            if "i2t" in config.directions:  # textual hard assignment: each region's best word
                scores[i, c] += chan_pool(sims.max(dim=1).values, config.pooling, config.pooling_temperature)
    return scores


@pytest.mark.parametrize(
    ("direction", "pooling", "self_attention"),
    [
        ("t2i", "lse", True),
        ("t2i", "mean", False),
        ("i2t", "lse", True),
        ("both", "softmax", True),
        ("i2t", "max", False),
    ],
)
def test_scores_equal_the_float64_reference(direction, pooling, self_attention):
    model = tiny_model(direction=direction, pooling=pooling, region_self_attention=self_attention)
    batch = raw_batch()
    with torch.no_grad():
        out = model(*batch)
    expected = reference_logits(model, *batch)
    torch.testing.assert_close(out.logits_per_image, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits_per_text, expected.T, rtol=0, atol=1e-5)


def test_padded_regions_are_never_attended_by_the_self_attention_block():
    model = tiny_model()
    features, region_mask, _, _ = raw_batch()
    noisy = features.masked_fill(~region_mask[..., None], 50.0)
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(noisy, region_mask), model.get_image_features(features, region_mask)
        )


def test_the_hard_assignment_is_one_hot_at_the_best_valid_key_and_the_soft_one_peaks_there():
    logits = torch.tensor([[[0.1, 0.9, 0.3], [0.5, 0.2, 0.95]]], dtype=torch.float64)
    query_mask = torch.tensor([[True, True]])
    key_mask = torch.tensor([[True, True, False]])  # the best key of query 1 is padding
    hard = hard_assignment(logits, query_mask, key_mask)
    torch.testing.assert_close(hard, torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64))
    soft = soft_assignment(logits, query_mask, key_mask, temperature=0.1)
    assert (soft.argmax(-1) == hard.argmax(-1)).all() and (soft[..., 2] == 0).all()
    torch.testing.assert_close(
        soft[0, 0, :2], torch.softmax(torch.tensor([0.1, 0.9], dtype=torch.float64) / 0.1, 0)
    )


def test_ccr_on_the_hard_assignment_contrasts_the_chosen_key_with_the_mean_of_the_others():
    model = tiny_model(ccr_weight=1.0, ccr_margin=0.2)
    features, region_mask, input_ids, attention_mask = raw_batch()
    out = model(features, region_mask, input_ids, attention_mask, return_loss=True)
    expected = 0.0
    for b in range(3):
        regions, words = out.image_embeds[b][region_mask[b]], out.text_embeds[b][attention_mask[b].bool()]
        terms = []
        for word in words:
            best = int((regions @ word).argmax())
            others = torch.cat([regions[:best], regions[best + 1 :]]).mean(0)
            cos = lambda a, b: F.cosine_similarity(a, b, dim=0)  # noqa: E731
            terms.append((0.2 - cos(word, regions[best]) + cos(word, others)).clamp_min(0))
        expected = expected + torch.stack(terms).mean()
    torch.testing.assert_close(out.ccr_loss, expected, rtol=0, atol=1e-6)


def test_attentions_are_the_one_hot_assignment_and_both_directions_give_two_constraint_views():
    model = tiny_model(direction="both", ccr_weight=0.5, ccs_weight=0.5)
    features, region_mask, input_ids, attention_mask = raw_batch()
    out = model(features, region_mask, input_ids, attention_mask, return_loss=True, output_attentions=True)
    words = attention_mask.bool()
    assert ((out.attentions == 0) | (out.attentions == 1)).all()
    torch.testing.assert_close(
        out.attentions.sum(-1)[words], torch.ones(int(words.sum()), dtype=torch.float64)
    )
    views = model.matched_attention(out.image_embeds, region_mask, out.text_embeds, words)
    assert [v.queries.shape[1] for v in views] == [6, 5]  # words over regions, then regions over words
    assert torch.isfinite(out.loss) and out.ccs_loss >= 0


def test_the_self_attention_heads_must_divide_the_embedding_size():
    with pytest.raises(StrictDataclassClassValidationError, match="self_attention_heads"):
        ChanConfig(embed_dim=10, self_attention_heads=4)
    assert ChanConfig().margin == 0.05 and ChanConfig().pooling == "lse"
