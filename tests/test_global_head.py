"""The global head: pooled embeddings, their contrastive and distillation terms, standalone training."""

import pytest
import torch
import torch.nn.functional as F

from modeling_ccr.models.global_head import GlobalHead, fit_global_head, head_settings, ranking_kl


def fragments(n=6, n_items=5, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    items = torch.randn(n, n_items, dim, generator=generator)
    mask = torch.arange(n_items)[None, :] < torch.randint(1, n_items + 1, (n, 1), generator=generator)
    return items, mask


@pytest.mark.parametrize("pooling", ["mean", "gpo"])
def test_embeddings_are_unit_vectors_of_global_dim_that_ignore_padding(pooling):
    head = GlobalHead({"embed_dim": 8, "global_dim": 4, "pooling": pooling})
    items, mask = fragments()
    images = head.embed_images(items, mask)
    assert images.shape == (6, 4) and head.embed_texts(items, mask).shape == (6, 4)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(6))
    garbage = torch.where(mask[..., None], items, 100.0)
    torch.testing.assert_close(head.embed_images(garbage, mask), images)


def test_an_untrained_mean_head_is_the_mean_pooled_baseline():
    head = GlobalHead({"embed_dim": 8})
    items, mask = fragments()
    weights = mask[..., None].float()
    expected = F.normalize((items * weights).sum(1) / weights.sum(1), dim=-1)
    torch.testing.assert_close(head.embed_texts(items, mask), expected)


@pytest.mark.parametrize("pooling", ["mean", "gpo"])
def test_both_loss_terms_reach_every_parameter(pooling):
    head = GlobalHead({"embed_dim": 8, "global_dim": 6, "pooling": pooling, "distill_weight": 0.5})
    items, mask = fragments()
    terms = head.loss(
        head.embed_images(items, mask), head.embed_texts(items.flip(0), mask.flip(0)), torch.randn(6, 6)
    )
    assert set(terms) == {"global_loss", "global_contrastive_loss", "global_distill_loss"}
    torch.testing.assert_close(
        terms["global_loss"], terms["global_contrastive_loss"] + 0.5 * terms["global_distill_loss"]
    )
    terms["global_loss"].backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_distillation_is_zero_when_the_global_ranking_matches_the_fine_one():
    head = GlobalHead({"embed_dim": 4, "distill_weight": 1.0, "temperature": 0.5, "distill_temperature": 0.5})
    images = F.normalize(torch.randn(5, 4), dim=-1)
    texts = F.normalize(torch.randn(5, 4), dim=-1)
    same = head.loss(images, texts, images @ texts.T)
    assert same["global_distill_loss"].abs() < 1e-6
    assert head.loss(images, texts, -(images @ texts.T))["global_distill_loss"] > 0.1


def test_captions_of_the_same_image_are_not_negatives():
    head = GlobalHead({"embed_dim": 4})
    images, texts = F.normalize(torch.randn(4, 4), dim=-1), F.normalize(torch.randn(4, 4), dim=-1)
    same_image = torch.eye(4, dtype=torch.bool)
    same_image[0, 1] = same_image[1, 0] = True
    masked = head.loss(images, texts, same_image=same_image)["global_contrastive_loss"]
    plain = head.loss(images, texts)["global_contrastive_loss"]
    assert masked < plain


def test_ranking_kl_ignores_excluded_candidates():
    teacher = torch.tensor([[0.0, 1.0, float("-inf")]])
    student = torch.tensor([[0.0, 1.0, float("-inf")]])
    assert ranking_kl(teacher, student) == 0
    assert ranking_kl(teacher, torch.tensor([[1.0, 0.0, float("-inf")]])) > 0


def test_distillation_without_fine_scores_is_an_error():
    head = GlobalHead({"embed_dim": 4, "distill_weight": 1.0})
    with pytest.raises(ValueError, match="distill_weight > 0 needs the fine-grained scores"):
        head.loss(torch.randn(3, 4), torch.randn(3, 4))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"embed_dim": 8, "pool": "mean"}, r"unknown field\(s\) \['pool'\]"),
        ({}, r"global_head.embed_dim: expected a positive integer, found None"),
        (
            {"embed_dim": 8, "pooling": "max"},
            r"global_head.pooling: expected one of \('mean', 'gpo'\), found 'max'",
        ),
        ({"embed_dim": 8, "temperature": 0}, r"global_head.temperature: expected a positive number, found 0"),
        (
            {"embed_dim": 8, "distill_weight": -1},
            r"global_head.distill_weight: expected a number >= 0, found -1",
        ),
    ],
)
def test_invalid_settings_name_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        head_settings(config)


@pytest.mark.parametrize("pooling", ["mean", "gpo"])
def test_fitting_on_a_toy_problem_lowers_the_loss_and_finds_the_pairs(pooling):
    """Regions and words are noisy copies of one hidden vector per image, rotated differently per side:
    an untrained head cannot match them, a trained one can."""
    generator = torch.Generator().manual_seed(0)
    n_images, dim = 64, 8
    hidden = torch.randn(n_images, dim, generator=generator)
    rotation = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0]
    regions = hidden[:, None] + 0.3 * torch.randn(n_images, 4, dim, generator=generator)
    caption_to_image = torch.arange(n_images).repeat_interleave(2)
    words = (
        hidden[caption_to_image, None] + 0.3 * torch.randn(2 * n_images, 3, dim, generator=generator)
    ) @ rotation
    region_mask = torch.ones(n_images, 4, dtype=torch.bool)
    word_mask = torch.ones(2 * n_images, 3, dtype=torch.bool)
    head = GlobalHead({"embed_dim": dim, "pooling": pooling, "temperature": 0.1})

    def recall_at_1():
        with torch.no_grad():
            scores = head.embed_texts(words, word_mask) @ head.embed_images(regions, region_mask).T
        return (scores.argmax(dim=1) == caption_to_image).float().mean()

    before = recall_at_1()
    losses = fit_global_head(
        head,
        regions,
        region_mask,
        words,
        word_mask,
        caption_to_image,
        steps=150,
        batch_size=32,
        learning_rate=1e-2,
    )
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert recall_at_1() > max(0.8, before + 0.3)
    assert not head.training


@pytest.mark.parametrize("pooling", ["mean", "gpo"])
def test_a_saved_head_reloads_into_a_head_of_the_same_settings(tmp_path, pooling):
    from safetensors.torch import load_file, save_file

    config = {"embed_dim": 8, "global_dim": 6, "pooling": pooling}
    head = GlobalHead(config)
    items, mask = fragments()
    fit_global_head(head, items, mask, items, mask, torch.arange(6), steps=3, batch_size=4)
    save_file(head.state_dict(), str(tmp_path / "head.safetensors"))
    reloaded = GlobalHead(config)
    reloaded.load_state_dict(load_file(str(tmp_path / "head.safetensors")))
    reloaded.eval()
    torch.testing.assert_close(reloaded.embed_images(items, mask), head.embed_images(items, mask))
    assert not torch.allclose(GlobalHead(config).embed_images(items, mask), head.embed_images(items, mask))
