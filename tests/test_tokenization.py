"""The word-level tokenizer: vocabulary rules, special ids, alignment with `split_words`, save/reload."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modeling_ccr.text.tokenization import (
    WORD_TOKEN_OFFSET,
    build_vocabulary,
    build_word_tokenizer,
    count_words,
    split_words,
    word_token_index,
    word_tokenizer_from_vocab,
)

CAPTIONS = [
    "A dog runs on the grass.",
    "A brown dog is running.",
    "Two dogs play; a dog barks!",
    "The dog, the cat and a bird...",
]

TRICKY = [
    "Wait... what?!",
    "It's a man's hat -- isn't it?",
    "3.5 m tall, 10,000 people; 2nd place",
    "Café crème à la Ñandú, naïve façade",
    "  multiple   spaces\tand\ttabs\nnewlines  ",
    "under_score snake_case __init__",
    "(parens) [brackets] {braces} <angle> \"quotes\" 'single'",
    "e\u0301 decomposed accent and ² superscript and ½ fraction",
    "İstanbul ŁÓDŹ STRASSE",
    "emoji 🙂🙂 and CJK 中文 字",
    "a <unk> <start> sign",
    "x\x1cy\x1fz",
    "hyphen-ated and em—dash and ellipsis…",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_word_tokenizer(CAPTIONS, min_count=2)


def backend_words(tokenizer: PreTrainedTokenizerFast, text: str) -> list[str]:
    backend = tokenizer.backend_tokenizer
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]


def test_special_tokens_have_fixed_ids(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<start>", "<end>", "<unk>"]) == [0, 1, 2, 3]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token_id == 3


def test_vocabulary_keeps_words_seen_min_count_times_by_count_then_alphabet():
    vocab = build_vocabulary(count_words(CAPTIONS), min_count=2)
    # "." x5, then the tie a x4 ("A" lower-cased) / dog x4 alphabetically, the x3; all else x1.
    assert list(vocab) == ["<pad>", "<start>", "<end>", "<unk>", ".", "a", "dog", "the"]
    assert list(vocab.values()) == list(range(8))


def test_min_count_one_keeps_every_word_and_higher_min_count_drops_rare_ones():
    all_words = set(count_words(CAPTIONS))
    assert set(build_word_tokenizer(CAPTIONS, min_count=1).get_vocab()) == all_words | {
        "<pad>",
        "<start>",
        "<end>",
        "<unk>",
    }
    assert set(build_word_tokenizer(CAPTIONS, min_count=4).get_vocab()) == {
        "<pad>",
        "<start>",
        "<end>",
        "<unk>",
        ".",
        "a",
        "dog",
    }


def test_vocabulary_is_deterministic_regardless_of_caption_order():
    assert (
        build_word_tokenizer(CAPTIONS, 1).get_vocab() == build_word_tokenizer(CAPTIONS[::-1], 1).get_vocab()
    )


def test_invalid_min_count_is_rejected():
    with pytest.raises(ValueError, match="min_count"):
        build_word_tokenizer(CAPTIONS, min_count=0)


def test_caption_is_wrapped_in_start_and_end(tokenizer):
    ids = tokenizer("A dog.")["input_ids"]
    vocab = tokenizer.get_vocab()
    assert ids == [1, vocab["a"], vocab["dog"], vocab["."], 2]


def test_unknown_words_map_to_unk(tokenizer):
    ids = tokenizer("A zebra dog")["input_ids"]
    assert ids[2] == tokenizer.unk_token_id
    assert tokenizer.convert_ids_to_tokens(ids) == ["<start>", "a", "<unk>", "dog", "<end>"]


def test_encode_then_decode_returns_the_lower_cased_words():
    tokenizer = build_word_tokenizer(CAPTIONS, min_count=1)
    for caption in CAPTIONS:
        ids = tokenizer(caption)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(split_words(caption))


@pytest.mark.parametrize("text", TRICKY)
def test_pre_tokenization_equals_split_words(tokenizer, text):
    assert backend_words(tokenizer, text) == split_words(text)


def test_pre_tokenization_equals_split_words_on_every_latin_character(tokenizer):
    # Basic Latin to Latin Extended-B, plus combining marks: each character inside and between words.
    for code_point in range(0x370):
        c = chr(code_point)
        text = f"A{c}b {c}{c} Z"
        assert backend_words(tokenizer, text) == split_words(text), hex(code_point)


@pytest.mark.parametrize("caption", [*CAPTIONS, *TRICKY])
def test_word_i_of_split_words_is_token_i_plus_one(caption):
    tokenizer = build_word_tokenizer([*CAPTIONS, *TRICKY], min_count=1)
    words = split_words(caption)
    ids = tokenizer(caption)["input_ids"]
    assert len(ids) == len(words) + 2
    for i, word in enumerate(words):
        assert ids[word_token_index(i)] == tokenizer.convert_tokens_to_ids(word)
    assert WORD_TOKEN_OFFSET == 1


def test_literal_special_token_text_in_a_caption_is_split_like_split_words(tokenizer):
    ids = tokenizer("a <unk> sign")["input_ids"]
    assert len(ids) == len(split_words("a <unk> sign")) + 2 == 7


def test_save_and_autotokenizer_reload_give_identical_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [*CAPTIONS, *TRICKY]
    assert reloaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert reloaded.model_max_length == tokenizer.model_max_length


def test_saved_tokenizer_names_only_stock_classes(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    text = "".join(p.read_text() for p in tmp_path.iterdir() if p.suffix == ".json")
    assert "modeling_ccr" not in text


def test_vocab_with_misplaced_specials_is_rejected():
    with pytest.raises(ValueError, match="<pad>"):
        word_tokenizer_from_vocab({"<start>": 0, "<pad>": 1, "<end>": 2, "<unk>": 3})
