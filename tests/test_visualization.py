"""Attention pictures: the PNG, its panels, the weights drawn, and errors."""

import pytest
import torch

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.data.pairs import caption_table
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.tokenization import build_word_tokenizer, split_words
from modeling_ccr.visualization import find_word, visualize, word_attention

plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(scope="module")
def split_and_tokenizer():
    corpus = build_synthetic_corpus(
        SyntheticCorpusConfig(train_images=6, validation_images=6, test_images=6, feature_dim=16)
    )
    return corpus["test"], build_word_tokenizer(caption_table(corpus["train"])[0], min_count=1)


def tiny_model(tokenizer, direction):
    torch.manual_seed(0)
    return ScanModel(
        ScanConfig(feature_dim=16, embed_dim=8, word_dim=6, vocab_size=len(tokenizer), direction=direction)
    )


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_weights_are_the_models_attention_for_that_word(split_and_tokenizer, direction):
    split, tokenizer = split_and_tokenizer
    model = tiny_model(tokenizer, direction)
    row = split[0]
    caption = row["captions"][0]
    word_index = 2
    weights, attended = word_attention(model, tokenizer, torch.tensor(row["features"]), caption, word_index)
    features = torch.tensor(row["features"])[None]
    tokens = tokenizer([caption], return_tensors="pt")
    with torch.no_grad():
        out = model(
            features,
            torch.ones(features.shape[:2], dtype=torch.bool),
            tokens["input_ids"],
            tokens["attention_mask"],
            output_attentions=True,
        )
    expected = (
        out.attentions[0, word_index + 1] if direction == "t2i" else out.attentions[0, :, word_index + 1]
    )
    torch.testing.assert_close(weights, expected)
    assert attended.shape == weights.shape and attended.dtype == torch.bool


def test_two_models_give_a_two_panel_png(split_and_tokenizer, tmp_path):
    split, tokenizer = split_and_tokenizer
    models = [(name, tiny_model(tokenizer, d), tokenizer) for name, d in (("base", "t2i"), ("other", "i2t"))]
    row = split[1]
    word = split_words(row["captions"][0])[-1]
    out = visualize(models, split, row["image_id"], 0, word, tmp_path / "pic.png")
    image = plt.imread(out)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # two panels side by side: wider than tall


def test_unknown_word_and_image_id_are_named(split_and_tokenizer, tmp_path):
    split, tokenizer = split_and_tokenizer
    models = [("base", tiny_model(tokenizer, "t2i"), tokenizer)]
    with pytest.raises(ValueError, match="not in the caption"):
        visualize(models, split, split[0]["image_id"], 0, "zebra-unicorn", tmp_path / "x.png")
    with pytest.raises(ValueError, match="image id 'nope'"):
        visualize(models, split, "nope", 0, "a", tmp_path / "x.png")
    with pytest.raises(ValueError, match="outside the caption"):
        find_word("a red dog", 7)
