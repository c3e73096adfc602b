"""SCAN's vocabulary files: SCAN's ids and SCAN's word rule (nltk's `word_tokenize` of the lower-cased
caption), stored in tokenizer.json so that a saved tokenizer reproduces it without nltk."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer

from modeling_ccr.errors import UserError
from modeling_ccr.text.tokenization import (
    VocabularyFileError,
    read_scan_vocabulary,
    scan_word_normalizer,
    scan_word_tokenizer,
    word_tokenizer_from_vocab,
)
from modeling_ccr.training.experiment import DATA_KEYS, parse_experiment_config, run_tokenizer

SPECIALS = ["<pad>", "<start>", "<end>", "<unk>"]
WORDS = ["a", "man", "'s", "t-shirt", "is", "n't", ".", ",", "ca", "dog", "``", "''", "mrs.", "st"]

# nltk's word_tokenize(caption.lower()) on one-sentence captions, written out by hand from its
# documented Treebank rules (the expected lists are nltk 3.x output).
NLTK_SPLITS = [
    ("A man's T-shirt isn't red.", ["a", "man", "'s", "t-shirt", "is", "n't", "red", "."]),
    ("He can't go, it's 3,5 km.", ["he", "ca", "n't", "go", ",", "it", "'s", "3,5", "km", "."]),
    ('She said "hi" (twice)!', ["she", "said", "``", "hi", "''", "(", "twice", ")", "!"]),
    ('"Quoted" start', ["``", "quoted", "''", "start"]),
    ("Mrs. Smith waits...", ["mrs.", "smith", "waits", "..."]),
    ("I cannot, gonna wanna go", ["i", "can", "not", ",", "gon", "na", "wan", "na", "go"]),
    (
        "the dogs' toys; $5 & 10% @home",
        ["the", "dogs", "'", "toys", ";", "$", "5", "&", "10", "%", "@", "home"],
    ),
    ("we'll they're you've i'm he'd", ["we", "'ll", "they", "'re", "you", "'ve", "i", "'m", "he", "'d"]),
    ("o'clock rock'n'roll 'tis", ["o'clock", "rock'n'roll", "'", "tis"]),
    ("a -- b: c,d a,,b", ["a", "--", "b", ":", "c", ",", "d", "a", ",", ",b"]),
    (
        "a dog (brown) [x] {y} <z>",
        ["a", "dog", "(", "brown", ")", "[", "x", "]", "{", "y", "}", "<", "z", ">"],
    ),
    ("end with quote.'", ["end", "with", "quote", ".", "'"]),
]


def write_scan_vocab(path, words=WORDS) -> dict[str, int]:
    """A vocabulary file in SCAN's layout (vocab.py's serialize_vocab: idx2word keys are strings)."""
    word2idx = {w: i for i, w in enumerate(SPECIALS + list(words))}
    path.write_text(
        json.dumps(
            {"word2idx": word2idx, "idx2word": {str(i): w for w, i in word2idx.items()}, "idx": len(word2idx)}
        )
    )
    return word2idx


def scan_split(caption: str) -> list[str]:
    return scan_word_normalizer().normalize_str(caption).split()


@pytest.mark.parametrize(("caption", "expected"), NLTK_SPLITS)
def test_scan_rule_splits_captions_as_nltk_word_tokenize_does(caption, expected):
    assert scan_split(caption) == expected


def test_scan_rule_matches_installed_nltk_on_random_punctuation_heavy_text():
    nltk_tokenize = pytest.importorskip("nltk.tokenize")
    pieces = ["a", "Man", "it", "s", "t", "can", "not", "gon", "na", "wanna", "more", "is", "'", "''", '"']
    pieces += [
        "`",
        ".",
        "..",
        ",",
        ":",
        ";",
        "!",
        "?",
        "-",
        "--",
        "(",
        ")",
        "<",
        ">",
        "*",
        "$",
        "3",
        "’",
        "“",
    ]
    pieces += ["”", "«", "–", " ", " ", "\t", "\n", "\u00a0", "'s", "'m", "'d", "'ll", "'re", "n't", "é"]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        # preserve_line: one sentence (punkt sentence splitting needs a data download; see the docs).
        assert scan_split(text) == nltk_tokenize.word_tokenize(text.lower(), preserve_line=True), repr(text)


def test_scan_vocabulary_file_keeps_scan_ids(tmp_path):
    word2idx = write_scan_vocab(tmp_path / "f30k_precomp_vocab.json")
    tokenizer = scan_word_tokenizer(tmp_path / "f30k_precomp_vocab.json")
    assert tokenizer.get_vocab() == word2idx
    assert len(tokenizer) == len(word2idx)
    assert (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (
        0,
        1,
        2,
        3,
    )


def test_a_caption_gets_the_ids_scan_data_loader_gives_it(tmp_path):
    word2idx = write_scan_vocab(tmp_path / "vocab.json")
    tokenizer = scan_word_tokenizer(tmp_path / "vocab.json")
    caption = "A man's T-shirt isn't blue."
    # SCAN's PrecompDataset: <start>, vocab(token) for each nltk token (unknown -> <unk>), <end>.
    expected = [1] + [word2idx.get(w, 3) for w in scan_split(caption)] + [2]
    assert tokenizer(caption).input_ids == expected
    assert expected[1:-1] == [4, 5, 6, 7, 8, 9, 3, 10]


def test_saved_scan_tokenizer_reloads_with_autotokenizer_and_splits_the_same(tmp_path):
    write_scan_vocab(tmp_path / "vocab.json")
    tokenizer = scan_word_tokenizer(tmp_path / "vocab.json")
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    for caption, _ in NLTK_SPLITS:
        assert reloaded(caption).input_ids == tokenizer(caption).input_ids


def test_word_offsets_point_into_the_original_caption(tmp_path):
    write_scan_vocab(tmp_path / "vocab.json")
    tokenizer = scan_word_tokenizer(tmp_path / "vocab.json")
    caption = "A man's T-shirt."
    encoding = tokenizer(caption, return_offsets_mapping=True, add_special_tokens=False)
    assert [caption[a:b] for a, b in encoding.offset_mapping] == ["A", "man", "'s", "T-shirt", "."]


def test_a_literal_special_token_in_a_caption_is_split_as_text(tmp_path):
    write_scan_vocab(tmp_path / "vocab.json")
    tokenizer = scan_word_tokenizer(tmp_path / "vocab.json")
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a <unk> dog").input_ids)
    assert tokens == ["<start>", "a", "<unk>", "<unk>", "<unk>", "dog", "<end>"]  # "<", "unk", ">" unknown


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("not json", "not a JSON file"),
        ('["word2idx"]', "expected an object with word2idx"),
        ('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "a": 5}, "idx2word": {}, "idx": 5}',
         "word2idx must use each id"),
        ('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3}, "idx2word": {"0": "x"}, "idx": 4}',
         "idx2word is not the inverse"),
        ('{"word2idx": {"<start>": 0, "<pad>": 1, "<end>": 2, "<unk>": 3}, '
         '"idx2word": {"0": "<start>", "1": "<pad>", "2": "<end>", "3": "<unk>"}, "idx": 4}',
         "must map '<pad>' to id 0"),
        ('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3}, '
         '"idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>"}, "idx": 7}',
         "field idx is 7"),
    ],
)  # fmt: skip
def test_a_malformed_vocabulary_file_is_refused_naming_file_and_field(tmp_path, content, field):
    path = tmp_path / "bad_vocab.json"
    path.write_text(content)
    with pytest.raises(VocabularyFileError, match=field) as caught:
        read_scan_vocabulary(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_a_missing_vocabulary_file_is_a_user_error(tmp_path):
    with pytest.raises(VocabularyFileError, match="not found"):
        read_scan_vocabulary(tmp_path / "nope.json")


def test_unknown_word_rule_is_refused():
    vocab = {w: i for i, w in enumerate(SPECIALS)}
    with pytest.raises(ValueError, match="word_rule"):
        word_tokenizer_from_vocab(vocab, word_rule="whitespace")


def test_run_config_data_vocab_selects_the_scan_tokenizer(tmp_path):
    word2idx = write_scan_vocab(tmp_path / "vocab.json")
    config = parse_experiment_config(
        {
            "output_dir": str(tmp_path / "run"),
            "model": {"backbone": "scan"},
            "data": {"vocab": str(tmp_path / "vocab.json")},
        }
    )
    # The training split is not read when a vocabulary file is given.
    tokenizer = run_tokenizer(config.data, train_split=None)
    assert tokenizer.get_vocab() == word2idx
    assert tokenizer("it's")["input_ids"] == [1, 3, 6, 2]
    assert DATA_KEYS["vocab"] is None
