"""`eval_mode` puts a model in eval mode for its body and restores the previous mode, even on an exception."""

import pytest
import torch

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.evaluation import gallery
from modeling_ccr.models.modeling_matcher import eval_mode


def tiny_model() -> ScanModel:
    return ScanModel(ScanConfig(feature_dim=8, embed_dim=16, vocab_size=30, word_dim=4))


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_eval_inside_and_restored_after(training):
    model = tiny_model().train(training)
    with eval_mode(model) as inside:
        assert inside is model
        assert not model.training
        assert not any(module.training for module in model.modules())
    assert model.training is training
    assert all(module.training is training for module in model.modules())


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_restored_when_the_body_raises(training):
    model = tiny_model().train(training)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training is training
    assert all(module.training is training for module in model.modules())


def test_a_plain_module_works_too():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    with pytest.raises(KeyError), eval_mode(module):
        raise KeyError("x")
    assert module.training and module[1].training


def test_gallery_similarity_restores_train_mode_when_encoding_fails(monkeypatch):
    model = tiny_model().train()

    def failing_encode(model, *args, **kwargs):
        assert not model.training
        raise RuntimeError("encoding failed")

    monkeypatch.setattr(gallery, "caption_table", lambda dataset: ([], []))
    monkeypatch.setattr(gallery, "encode_images", failing_encode)
    with pytest.raises(RuntimeError, match="encoding failed"):
        gallery.corpus_similarity(model, tokenizer=None, dataset=None)
    assert model.training
