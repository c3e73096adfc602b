"""The global head inside a matcher: config, joint training with every registered backbone, save and
reload, the first stage of two-stage retrieval, and `ccr evaluate --rerank-k` on a trained folder."""

from __future__ import annotations

import json

import pytest
import torch
from test_backbones import build, member_config
from transformers import AutoModel

from modeling_ccr import EnsembleModel, ScanConfig
from modeling_ccr.cli import USER_ERROR_EXIT_CODE, main
from modeling_ccr.evaluation.index import EMBEDDINGS_FILE, INDEX_FILE
from modeling_ccr.evaluation.two_stage import (
    RerankError,
    head_embeddings,
    pooled_embeddings,
    two_stage_similarity,
)
from modeling_ccr.models.backbones import SINGLE_BACKBONES
from modeling_ccr.models.configuration_ensemble import EnsembleConfig, member_entry
from modeling_ccr.training.experiment import parse_experiment_config, run_experiment

SINGLE = sorted(SINGLE_BACKBONES)
HEAD = {"pooling": "gpo", "global_dim": 6, "distill_weight": 0.5, "temperature": 0.1}
N_REGIONS = 6


def batch(n=4, seed=0):
    """A tiny training batch: region features (n, N_REGIONS, 12) with padding, token ids (n, 5)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, N_REGIONS, 12, generator=generator)
    region_mask = torch.ones(n, N_REGIONS, dtype=torch.bool)
    region_mask[1, 4:] = False
    input_ids = torch.randint(3, 40, (n, 5), generator=generator)
    attention_mask = torch.ones(n, 5, dtype=torch.long)
    attention_mask[2, 3:] = 0
    return {
        "region_features": features,
        "region_mask": region_mask,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }


def embedded_gallery(model, n_images=5, n_captions=7, seed=1):
    """A gallery encoded by the model: (image_embeds, region_mask, text_embeds, word_mask)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n_images, N_REGIONS, 12, generator=generator)
    region_mask = torch.ones(n_images, N_REGIONS, dtype=torch.bool)
    region_mask[0, 3:] = False
    input_ids = torch.randint(3, 40, (n_captions, 6), generator=generator)
    word_mask = torch.arange(6)[None, :] < torch.randint(1, 7, (n_captions, 1), generator=generator)
    with torch.no_grad():
        images = model.get_image_features(features, region_mask)
        texts = model.get_text_features(input_ids, word_mask.long())
    return images, region_mask, texts, word_mask


# -- config ------------------------------------------------------------------------------------------------


def test_the_config_fills_every_head_setting_with_the_matchers_embed_dim_and_round_trips(tmp_path):
    config = ScanConfig(
        feature_dim=12, embed_dim=8, vocab_size=40, word_dim=6, global_head={"pooling": "gpo"}
    )
    assert config.global_head == {
        "embed_dim": 8,
        "global_dim": 8,
        "pooling": "gpo",
        "temperature": 0.05,
        "contrastive_weight": 1.0,
        "distill_weight": 0.0,
        "distill_temperature": 0.05,
    }
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["global_head"] == config.global_head
    assert ScanConfig.from_pretrained(tmp_path).global_head == config.global_head
    assert ScanConfig(feature_dim=12, embed_dim=8, vocab_size=40, word_dim=6).global_head is None


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ({"pooling": "max"}, r"global_head.pooling: expected one of \('mean', 'gpo'\), found 'max'"),
        ({"pool": "gpo"}, r"global_head: unknown field\(s\) \['pool'\]"),
        ({"distill_weight": -0.5}, r"global_head.distill_weight: expected a number >= 0, found -0.5"),
        ({"embed_dim": 16}, r"'global_head.embed_dim' must equal embed_dim \(8\) or be left out, found 16"),
        ("gpo", r"config field 'global_head' of ScanConfig must be dict \| None, found 'gpo' \(str\)"),
    ],
)
def test_a_bad_head_setting_is_a_one_line_error_naming_the_field(head, message):
    with pytest.raises(ValueError, match=message) as error:
        ScanConfig(feature_dim=12, embed_dim=8, vocab_size=40, word_dim=6, global_head=head)
    assert "\n" not in str(error.value)


# -- joint training ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE)
def test_the_head_trains_jointly_with_every_backbone(name):
    model = build(name, global_head=HEAD).train()
    inputs = batch()
    output = model(**inputs, return_loss=True)
    assert output.global_image_embeds.shape == (4, 6) and output.global_text_embeds.shape == (4, 6)
    # The head's weighted terms are part of the loss: loss = base (+ constraint terms, off here) + head.
    torch.testing.assert_close(output.loss, output.base_loss + output.global_loss)
    torch.testing.assert_close(
        output.global_loss, output.global_contrastive_loss + 0.5 * output.global_distill_loss
    )
    output.loss.backward()
    for parameter_name, parameter in model.global_head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        output = model(**inputs, return_loss=True)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append((float(output.loss.detach()), float(output.global_loss.detach())))
    assert losses[-1][0] < losses[0][0] and losses[-1][1] < losses[0][1], losses


def test_distillation_reads_the_fine_grained_scores_without_training_them():
    """SGR's score head is used by its fine-grained scores only: the head's loss must not reach it."""
    model = build("sgr", global_head={"distill_weight": 1.0, "contrastive_weight": 0.0})
    output = model(**batch(), return_loss=True)
    assert output.global_distill_loss > 0
    assert torch.autograd.grad(output.global_loss, model.score_head.weight, allow_unused=True)[0] is None
    # ... while the fine-grained base loss does reach it.
    assert torch.autograd.grad(output.base_loss, model.score_head.weight)[0].abs().sum() > 0


def test_captions_of_one_image_are_not_the_heads_negatives():
    model = build("scan", global_head={"contrastive_weight": 1.0})
    inputs = batch()
    plain = model(**inputs, return_loss=True).global_contrastive_loss
    masked = model(**inputs, return_loss=True, image_index=torch.tensor([0, 0, 1, 2])).global_contrastive_loss
    assert not torch.allclose(plain, masked)


def test_without_a_head_the_output_has_no_head_terms():
    output = build("scan")(**batch(), return_loss=True)
    assert output.global_loss is None and output.global_image_embeds is None
    torch.testing.assert_close(output.loss, output.base_loss)


# -- save and reload ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE)
def test_a_trained_head_saves_and_reloads_with_identical_embeddings(name, tmp_path):
    model = build(name, global_head=HEAD)
    optimizer = torch.optim.Adam(model.global_head.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(**batch(), return_loss=True).global_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.global_head == model.config.global_head
    # The weights come back bit for bit; the embeddings only to float32 rounding, because the BLAS
    # kernel a matmul takes may depend on where the reloaded tensors happen to sit in memory.
    saved = model.global_head.state_dict()
    for key, value in reloaded.global_head.state_dict().items():
        assert torch.equal(value, saved[key]), key
    gallery = embedded_gallery(model)
    expected = head_embeddings(model, *gallery)
    for got, want in zip(head_embeddings(reloaded, *gallery), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    fresh = build(name, seed=1, global_head=HEAD)
    assert not torch.allclose(fresh.global_head.embed_images(gallery[0], gallery[1]), expected[0])


# -- the first stage of two-stage retrieval ----------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE)
def test_with_the_head_as_first_stage_k_at_the_gallery_size_equals_exact_scoring(name):
    model = build(name, global_head=HEAD).eval()
    gallery = embedded_gallery(model)
    torch.testing.assert_close(two_stage_similarity(model, *gallery, k=7), model.similarity(*gallery))


def test_the_models_head_is_the_default_first_stage():
    model = build("scan", global_head=HEAD).eval()
    gallery = embedded_gallery(model, n_images=6, n_captions=9)
    images, texts = head_embeddings(model, *gallery)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(6))
    by_default = two_stage_similarity(model, *gallery, k=1)
    torch.testing.assert_close(
        by_default, two_stage_similarity(model, *gallery, k=1, global_embeds=(images, texts))
    )
    mean_pooled = (pooled_embeddings(gallery[0], gallery[1]), pooled_embeddings(gallery[2], gallery[3]))
    assert not torch.equal(by_default, two_stage_similarity(model, *gallery, k=1, global_embeds=mean_pooled))
    assert head_embeddings(build("scan"), *gallery) is None


def test_an_ensemble_of_members_with_heads_searches_by_the_mean_of_their_cosines():
    ensemble = build("ensemble", global_head={"pooling": "gpo"}).eval()
    gallery = embedded_gallery(ensemble)
    images, texts = head_embeddings(ensemble, *gallery)
    member_scores = []
    for member, member_images, member_texts in zip(
        ensemble.members, ensemble.split_embeds(gallery[0]), ensemble.split_embeds(gallery[2]), strict=True
    ):
        own_images, own_texts = head_embeddings(member, member_images, gallery[1], member_texts, gallery[3])
        member_scores.append(own_images @ own_texts.T)
    torch.testing.assert_close(images @ texts.T, torch.stack(member_scores).mean(dim=0))
    torch.testing.assert_close(two_stage_similarity(ensemble, *gallery, k=7), ensemble.similarity(*gallery))


def test_an_ensemble_where_only_some_members_carry_a_head_is_refused_for_the_first_stage():
    members = [
        member_entry(member_config("scan", N_REGIONS, global_head={"pooling": "mean"})),
        member_entry(member_config("scan", N_REGIONS, direction="i2t")),
    ]
    ensemble = EnsembleModel(EnsembleConfig(members=members)).eval()
    with pytest.raises(
        RerankError, match=r"every member needs one for a global-head first stage, found 1 of 2"
    ):
        two_stage_similarity(ensemble, *embedded_gallery(ensemble), k=2)


# -- ccr evaluate --rerank-k on a trained folder -----------------------------------------------------------


@pytest.fixture(scope="module")
def trained_with_head(tmp_path_factory):
    """SCAN with a GPO head trained by a whole (tiny) run from its YAML-shaped config."""
    tmp_path = tmp_path_factory.mktemp("head_run")
    raw = {
        "seed": 3,
        "output_dir": str(tmp_path / "run"),
        "data": {
            "source": "synthetic",
            "synthetic": {"train_images": 64, "validation_images": 10, "test_images": 12, "feature_dim": 16},
            "min_word_count": 1,
        },
        "model": {
            "backbone": "scan",
            "embed_dim": 16,
            "word_dim": 8,
            "global_head": {"pooling": "gpo", "distill_weight": 1.0},
        },
        "training": {
            "max_steps": 6,
            "per_device_train_batch_size": 32,
            "eval_strategy": "no",
            "save_strategy": "no",
            "load_best_model_at_end": False,
            "logging_steps": 2,
            "lr_decay_epochs": 1,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
        },
    }
    return tmp_path, run_experiment(parse_experiment_config(raw))


def test_ccr_evaluate_rerank_k_writes_two_stage_and_first_stage_numbers(trained_with_head, capsys):
    tmp_path, model_dir = trained_with_head
    assert AutoModel.from_pretrained(model_dir).global_head is not None
    index_dir = tmp_path / "index"
    output = tmp_path / "two_stage.json"
    argv = [str(model_dir), "--rerank-k", "3", "--index", str(index_dir), "--output", str(output)]
    assert main(["evaluate", *argv]) == 0
    printed = capsys.readouterr().out
    assert "First stage alone (the global head)" in printed and "first-stage index: flat" in printed
    metrics = json.loads(output.read_text())["metrics"]
    assert metrics["rerank_k"] == 3 and metrics["first_stage"]["source"] == "global_head"
    assert metrics["first_stage"]["n_images"] == 12 and 0 <= metrics["first_stage"]["rsum"] <= 600
    assert metrics["first_stage_index"]["kind"] == "flat"
    assert metrics["first_stage_index"]["shortlist_recall@3"] == 1.0
    assert (index_dir / INDEX_FILE).is_file() and (index_dir / EMBEDDINGS_FILE).is_file()
    # Exact scoring of the same folder: with k = all 12 images two-stage gives its numbers.
    exact_output, full_output = tmp_path / "exact.json", tmp_path / "full_k.json"
    assert main(["evaluate", str(model_dir), "--output", str(exact_output)]) == 0
    assert main(["evaluate", str(model_dir), "--rerank-k", "60", "--output", str(full_output)]) == 0
    exact = json.loads(exact_output.read_text())["metrics"]
    full = json.loads(full_output.read_text())["metrics"]
    assert "first_stage" not in exact
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "rsum"):
        assert full[key] == pytest.approx(exact[key]), key


def test_an_index_without_rerank_k_is_a_one_line_user_error(trained_with_head, capsys):
    tmp_path, model_dir = trained_with_head
    assert main(["evaluate", str(model_dir), "--index", str(tmp_path / "x")]) == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert "--index" in err and "--rerank-k" in err and "Traceback" not in err
    assert main(["evaluate", str(model_dir), "--rerank-k", "0"]) == USER_ERROR_EXIT_CODE
    assert "--rerank-k must be a positive number" in capsys.readouterr().err


def test_the_first_stage_metrics_are_the_retrieval_metrics_of_the_heads_own_scores(trained_with_head):
    from modeling_ccr.artifacts.loading import load_matcher
    from modeling_ccr.data.corpora import load_evaluation_split
    from modeling_ccr.data.pairs import caption_table
    from modeling_ccr.evaluation.gallery import encode_captions, encode_images, evaluate_matchers
    from modeling_ccr.metrics.retrieval import evaluate_retrieval

    _, model_dir = trained_with_head
    model, tokenizer = load_matcher(model_dir)
    model.eval()
    split, _ = load_evaluation_split(model_dir, None, "test")
    metrics = evaluate_matchers([model], [tokenizer], split, "full", 5, rerank_k=2)
    captions, caption_to_image = caption_table(split)
    gallery = (*encode_images(model, split), *encode_captions(model, tokenizer, captions))
    images, texts = head_embeddings(model, *gallery)
    expected = evaluate_retrieval(images @ texts.T, caption_to_image, check_captions_per_image=5)
    assert metrics["first_stage"] == {"source": "global_head", **expected}
    assert metrics["rsum"] != expected["rsum"]  # the re-ranked scores, not the first stage's


def test_a_run_logs_the_heads_loss_terms_beside_the_base_loss(trained_with_head):
    _, model_dir = trained_with_head
    history = json.loads((model_dir / "run_info.json").read_text())["log_history"]
    logged = [entry for entry in history if "loss" in entry]
    assert logged
    for entry in logged:
        assert {"global_loss", "global_contrastive_loss", "global_distill_loss"} <= set(entry)
        assert entry["global_loss"] > 0


def test_an_ensemble_sums_its_members_head_losses_into_its_output():
    ensemble = build("ensemble", global_head={"pooling": "gpo"}).train()
    torch.manual_seed(0)
    output = ensemble(**batch(), return_loss=True)
    torch.manual_seed(0)
    members = [member(**batch(), return_loss=True) for member in ensemble.members]
    for name in ("global_loss", "global_contrastive_loss"):
        torch.testing.assert_close(getattr(output, name), sum(getattr(m, name) for m in members))
