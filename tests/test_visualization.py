"""Attention pictures: the weights drawn, the PNG and its panels, gold boxes, and errors."""

import pytest
import torch

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.data.pairs import caption_table
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.evaluation.pictures import (
    DPI,
    draw_attention,
    figure_inches,
    find_word,
    panel_scores,
    phrase_boxes_for_word,
    visualize,
    visualize_models,
    word_attention_over_regions,
)
from modeling_ccr.text.tokenization import build_word_tokenizer, split_words

plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(scope="module")
def split_and_tokenizer():
    corpus = build_synthetic_corpus(
        SyntheticCorpusConfig(train_images=6, validation_images=6, test_images=6, feature_dim=16)
    )
    return corpus["test"], build_word_tokenizer(caption_table(corpus["train"])[0], min_count=1)


def tiny_model(tokenizer, direction="t2i"):
    torch.manual_seed(0)
    return ScanModel(
        ScanConfig(feature_dim=16, embed_dim=8, word_dim=6, vocab_size=len(tokenizer), direction=direction)
    )


def png_shape(path):
    """(height, width) in pixels of a PNG, read back with matplotlib."""
    return plt.imread(path).shape[:2]


def expected_shape(n_panels, image_size):
    width, height = figure_inches(n_panels, image_size)
    return round(height * DPI), round(width * DPI)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_weights_are_the_words_row_for_t2i_and_its_column_for_i2t(split_and_tokenizer, direction):
    split, tokenizer = split_and_tokenizer
    model = tiny_model(tokenizer, direction)
    row = split.with_format("torch")[0]
    caption = split[0]["captions"][0]
    weights, word_index = word_attention_over_regions(
        model, tokenizer, row["features"], caption, 2, boxes=row["boxes"]
    )
    tokens = tokenizer([caption], return_tensors="pt")
    with torch.no_grad():
        out = model(
            row["features"][None],
            torch.ones(1, len(row["features"]), dtype=torch.bool),
            tokens["input_ids"],
            tokens["attention_mask"],
            output_attentions=True,
        )
    token = word_index + 1  # <start> comes first
    expected = out.attentions[0, token] if direction == "t2i" else out.attentions[0, :, token]
    assert word_index == 2 and weights.shape == (len(row["boxes"]),)
    torch.testing.assert_close(weights, expected)


def test_a_word_given_as_text_is_its_first_occurrence():
    assert find_word("a dog and a cat", "a") == 0
    assert find_word("a dog and a cat", "Cat") == 4
    assert find_word("a dog and a cat", 3) == find_word("a dog and a cat", "3") == 3


def test_one_panel_png_has_the_figure_size(split_and_tokenizer, tmp_path):
    split, tokenizer = split_and_tokenizer
    row = split[0]
    word = split_words(row["captions"][0])[-1]
    out = visualize_models(
        [("base", tiny_model(tokenizer), tokenizer)], split, row["image_id"], 0, word, tmp_path / "one.png"
    )
    assert png_shape(out) == expected_shape(1, tuple(row["image_size"]))


def test_two_model_folders_give_two_panels_side_by_side(split_and_tokenizer, tmp_path):
    split, tokenizer = split_and_tokenizer
    for name, direction in (("base", "t2i"), ("constrained", "i2t")):
        tiny_model(tokenizer, direction).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    row = split[1]
    out = visualize(
        [tmp_path / "base", tmp_path / "constrained"],
        split,
        row["image_id"],
        row["captions"][1],  # caption given as text
        "1",  # word given as an index string, as the CLI passes it
        tmp_path / "two.png",
    )
    height, width = png_shape(out)
    assert (height, width) == expected_shape(2, tuple(row["image_size"]))
    assert width > 1.5 * expected_shape(1, tuple(row["image_size"]))[1]


def test_drawing_on_an_image_file_keeps_the_figure_size(tmp_path):
    image = tmp_path / "photo.png"
    plt.imsave(image, torch.rand(60, 80, 3).numpy())
    panel = {"name": "m", "boxes": torch.tensor([[0, 0, 40, 30], [40, 30, 80, 60]]), "weights": [0.8, 0.2]}
    out = draw_attention([panel], tmp_path / "on_image.png", image_path=image, title="a dog - 'dog'")
    assert png_shape(out) == expected_shape(1, (80, 60))


def test_the_picture_draws_the_weights_so_other_weights_give_another_picture(tmp_path):
    image = tmp_path / "white.png"
    plt.imsave(image, torch.ones(60, 80, 3).numpy())
    boxes = torch.tensor([[0, 0, 40, 30], [40, 30, 80, 60]])
    pictures = []
    for name, weights in (("a", [0.9, 0.1]), ("b", [0.1, 0.9])):
        panel = {"name": "m", "boxes": boxes, "weights": weights}
        out = draw_attention([panel], tmp_path / f"{name}.png", image_path=image, title="a dog - 'dog'")
        pictures.append(torch.from_numpy(plt.imread(out)[..., :3].copy()))
    for picture in pictures:
        assert picture.std() > 0.01, "the picture is blank"
    assert (pictures[0] - pictures[1]).abs().max() > 0.1, "the weights did not change what was drawn"


def test_scores_are_precision_and_recall_of_the_attended_set_against_gold():
    panel = {"name": "m", "boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30]]), "weights": [0.9, 0.1]}
    assert panel_scores(panel, torch.tensor([[0.0, 0.0, 10.0, 10.0]])) == "attended-set P 1.00  R 1.00"
    assert panel_scores(panel, torch.tensor([[20.0, 20.0, 30.0, 30.0]])) == "attended-set P 0.00  R 0.00"
    assert panel_scores(panel, None) == ""


def test_gold_boxes_come_from_grounded_phrases_covering_the_word():
    phrases = [
        {"first_word": 0, "num_words": 2, "phrase_type": "animals", "boxes": [[1, 2, 3, 4]]},
        {"first_word": 3, "num_words": 1, "phrase_type": "scene", "boxes": [[5, 6, 7, 8]]},
    ]
    assert phrase_boxes_for_word(phrases, 1).tolist() == [[1, 2, 3, 4]]
    assert phrase_boxes_for_word(phrases, 2).shape == (0, 4)
    assert phrase_boxes_for_word(phrases, 3).shape == (0, 4)  # scene phrases have no object to attend


def test_unknown_word_and_image_id_are_named(split_and_tokenizer, tmp_path):
    split, tokenizer = split_and_tokenizer
    models = [("base", tiny_model(tokenizer), tokenizer)]
    image_id = split[0]["image_id"]
    with pytest.raises(ValueError, match="'zebra' is not in the caption"):
        visualize_models(models, split, image_id, 0, "zebra", tmp_path / "x.png")
    with pytest.raises(ValueError, match=f"image id 'nope' is not in the split.*{image_id}"):
        visualize_models(models, split, "nope", 0, "a", tmp_path / "x.png")
    with pytest.raises(ValueError, match="caption index 9 is outside"):
        visualize_models(models, split, image_id, 9, "a", tmp_path / "x.png")
    with pytest.raises(ValueError, match="outside the caption's 3 words"):
        find_word("a red dog", 7)


def test_an_image_without_boxes_is_refused(split_and_tokenizer):
    split, tokenizer = split_and_tokenizer
    features = torch.randn(4, 16)
    with pytest.raises(ValueError, match="has no region boxes"):
        word_attention_over_regions(
            tiny_model(tokenizer), tokenizer, features, "a dog", "dog", boxes=torch.zeros(0, 4)
        )
    with pytest.raises(ValueError, match="need a 'boxes' column"):
        visualize_models([], split.remove_columns("boxes"), split[0]["image_id"], 0, 0, "x.png")
