"""Word-level tokenizer for region-caption matching.

A caption becomes `<start> w_1 ... w_m <end>`, one token per word of `split_words(caption)`, so word i
of `split_words(caption)` is token `i + WORD_TOKEN_OFFSET` (the phrase spans of Flickr30k Entities and
the attention metrics rely on that). The tokenizer is a stock `tokenizers` pipeline wrapped in a stock
transformers `PreTrainedTokenizerFast`: `save_pretrained` writes `tokenizer.json` and
`transformers.AutoTokenizer.from_pretrained` reloads it without `modeling_ccr` installed.

Pipeline (each stage mirrors `split_words`):
- normaliser: `Lowercase` only (no accent stripping, no Unicode normalisation);
- pre-tokeniser: the `split_words` regex in the backend's regex dialect,
  `[\\p{L}\\p{N}_]+|[^\\p{L}\\p{N}_\\s\\x1c-\\x1f]`, keeping the matches and dropping the rest. It is
  spelled with Unicode classes because the backend's `\\w` (Oniguruma) also takes combining marks and
  connector punctuation where Python's `\\w` (alphanumerics and `_`) does not; `\\x1c-\\x1f` are
  whitespace for Python's `\\s` only;
- model: `WordLevel`, every unknown word -> `<unk>`;
- post-processor: `<start> $A <end>`.

A second word rule, for vocabularies made by SCAN's code (`scan_word_tokenizer`), reproduces nltk's
`word_tokenize` with the same stock components (see "SCAN's vocabulary files" below).

Known divergences from `split_words`, found by sweeping every code point: a word-final capital sigma
(Python lower-cases it to the final form, the backend per character to the medial form) and
characters that Python's Unicode database does not assign yet. Neither occurs in English captions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..errors import UserError

# A word is a run of letters/digits/underscore; every other non-space character is a word of its own.
_WORD_PATTERN = re.compile(r"\w+|[^\w\s]")

# The same rule for the `tokenizers` backend (see the module docstring for why it is spelled this way).
_BACKEND_WORD_PATTERN = r"[\p{L}\p{N}_]+|[^\p{L}\p{N}_\s\x1c-\x1f]"

PAD_TOKEN, START_TOKEN, END_TOKEN, UNK_TOKEN = "<pad>", "<start>", "<end>", "<unk>"
# Fixed ids: padding is 0 so that zero-initialised id buffers are padding.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, START_TOKEN, END_TOKEN, UNK_TOKEN)

# How a caption becomes words: this project's `split_words`, or SCAN's nltk rule (`scan_word_normalizer`).
WORD_RULES = ("split_words", "scan")

# Word i of `split_words(caption)` is token i + WORD_TOKEN_OFFSET of the encoded caption (after <start>).
WORD_TOKEN_OFFSET: int = 1

# Longest COCO / Flickr30K captions have well under 100 words; 128 tokens leaves room for <start>/<end>.
DEFAULT_MODEL_MAX_LENGTH = 128


def split_words(caption: str) -> list[str]:
    """Lower-case `caption` and split it into words, the unit that phrase word spans index into."""
    return _WORD_PATTERN.findall(caption.lower())


def word_token_index(word_index: int) -> int:
    """Position in `input_ids` of word `word_index` of `split_words(caption)`.

    Every word is exactly one token and `<start>` comes first, so this is `word_index + 1`. It holds
    as long as the caption was not truncated before that word.
    """
    if word_index < 0:
        raise ValueError(f"word_index must be >= 0, got {word_index}")
    return word_index + WORD_TOKEN_OFFSET


def count_words(captions: Iterable[str]) -> Counter[str]:
    """Word frequencies of `captions` under `split_words`."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(split_words(caption))
    return counts


def build_vocabulary(counts: Counter[str], min_count: int = 4) -> dict[str, int]:
    """Specials (ids 0-3), then words seen >= `min_count` times by descending count, ties alphabetical.

    The order is a pure function of the counts, so the same captions always give the same ids.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in kept:
        # `split_words` never yields "<pad>" etc. (it splits off "<"), so no word collides with a special.
        vocab.setdefault(word, len(vocab))
    return vocab


def word_tokenizer_from_vocab(
    vocab: dict[str, int], model_max_length: int = DEFAULT_MODEL_MAX_LENGTH, word_rule: str = "split_words"
) -> PreTrainedTokenizerFast:
    """Wrap a word -> id mapping (specials at ids 0-3) as a transformers fast tokenizer.

    word_rule: how a caption becomes words: "split_words" (this project's rule) or "scan" (SCAN's
    nltk Treebank rule, for SCAN's vocabulary files; `scan_word_normalizer`).
    """
    for i, token in enumerate(SPECIAL_TOKENS):
        if vocab.get(token) != i:
            raise ValueError(f"vocab must map {token!r} to id {i}, found {vocab.get(token)!r}")
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    if word_rule == "split_words":
        backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.Split(
            Regex(_BACKEND_WORD_PATTERN), behavior="removed", invert=True
        )
    elif word_rule == "scan":
        backend.normalizer = scan_word_normalizer()
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        raise ValueError(f"word_rule must be one of {list(WORD_RULES)}, got {word_rule!r}")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{START_TOKEN} $A {END_TOKEN}",
        special_tokens=[(START_TOKEN, vocab[START_TOKEN]), (END_TOKEN, vocab[END_TOKEN])],
    )
    # Joins words with single spaces; cleanup=False so that "it ' s" is not glued back to "it's".
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=START_TOKEN,
        eos_token=END_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        # A caption that literally contains "<unk>" must still be split like `split_words` does,
        # not matched as the special token (that would break the word -> token alignment).
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def build_word_tokenizer(
    captions: Iterable[str], min_count: int = 4, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer from training captions.

    Vocabulary: `<pad>`=0, `<start>`=1, `<end>`=2, `<unk>`=3, then every word of `split_words` seen at
    least `min_count` times (SCAN uses 4), by descending count then alphabetically.
    Encoding a caption gives `<start> w_1 ... w_m <end>` with one id per word (unknown -> `<unk>`).
    """
    return word_tokenizer_from_vocab(build_vocabulary(count_words(captions), min_count), model_max_length)


# Words with no region of their own (articles, prepositions, conjunctions, pronouns, auxiliaries,
# punctuation): skipped as constraint queries with `constraint_skip_words: function_words`.
FUNCTION_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "and", "or", "with", "in", "on", "at", "to", "from", "by", "for", "into",
    "onto", "near", "next", "beside", "under", "over", "behind", "while", "as", "is", "are", "was",
    "were", "be", "it", "its", "his", "her", "their", "this", "that", "there", "some", ".", ",", "'", "s",
)  # fmt: skip


# -- SCAN's vocabulary files and SCAN's word rule -------------------------------------------------
# SCAN (and SGRAF, BFAN, which reuse its vocab/*.json) split a caption with nltk's `word_tokenize` of the
# lower-cased caption: the Treebank rules, which keep "'s" and "t-shirt" where `split_words` gives "'",
# "s" and "t", "-", "shirt". A tokenizer built on SCAN's vocabulary must split the same way, or real
# captions map to other ids. The rules below restate nltk's `NLTKWordTokenizer.tokenize` (the tokenizer
# `word_tokenize` calls on each sentence) as `tokenizers` normalisers, in nltk's order, so the rule is
# stored in tokenizer.json and a saved model reproduces it without nltk. nltk rewrites the string with
# back-references; here each rewrite is either a literal replacement or a zero-width match replaced by
# " " (a space inserted where nltk inserts one), with the context nltk consumes written as look-arounds.
# Known divergences (docs/original_checkpoints.md): sentence splitting (nltk first splits a text into
# sentences with punkt; here the caption is one sentence, so a period inside a caption stays attached,
# "man." in "a man. a dog."), runs of more than 15 consecutive ':'/',' characters, and non-ASCII
# capitals (SCAN ran on Python 2, whose `str.lower` of UTF-8 bytes lowers ASCII letters only).

# Python's `\w` and `\s` (nltk's patterns are Python `re` patterns), spelled for the backend (Oniguruma).
_PY_WORD = r"[\p{L}\p{N}_]"
# (The class holds the characters themselves: the backend reads "\\xa0" as a byte, not as U+00A0.)
_PY_SPACE = "[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NOT_AFTER_WORD = rf"(?<!{_PY_WORD})"  # nltk's \b before a word character
_NOT_BEFORE_WORD = rf"(?!{_PY_WORD})"  # nltk's \b after a word character
# nltk's `([:,])([^\d])` consumes the character after a ':' or ',', so in a run of them only those at
# even offsets are padded. A position with an odd number of run characters right before it (up to 15;
# the backend's look-behind needs fixed-length branches) is just after such a character.
_AFTER_EVEN_RUN_OFFSET = "|".join(rf"\A[:,]{{{n}}}|[^:,][:,]{{{n}}}" for n in range(1, 16, 2))
_CLOSERS = "\\]\\)}>\"'\u00bb\u201d\u2019"  # what nltk lets follow a caption's final period
_FINAL = rf"[{_CLOSERS} ]*+{_PY_SPACE}*\Z"  # ... then only closers and spaces to the end


# nltk rewrites with one regex what takes several passes here; within such a group a pass marks its
# insertions with this noncharacter (Unicode keeps it for internal use), so the group's later passes do
# not see them as spaces, as nltk's single pass does not see its own output. It becomes a space after.
_MARK = "\ufdd0"


def _insert_space(pattern: str, mark: str = " ") -> tuple[Regex, str]:
    """A zero-width `pattern` (look-arounds only): a space (or `mark`) goes where it matches."""
    return Regex(pattern), mark


def _clitics(clitics: tuple[str, ...]) -> list[tuple[str | Regex, str]]:
    """nltk's `([^' ])(clitic_1|clitic_2|...) ` -> `\\1 \\2 `: one pass per clitic, then the marks become spaces."""
    passes = [_insert_space(rf"(?<=[^' ])(?={clitic} )", _MARK) for clitic in clitics]
    return [*passes, (_MARK, " ")]


def _isolate(chars: str) -> list[tuple[str, str]]:
    r"""Each of `chars` becomes a word of its own (nltk's `r" \g<0> "` on a character class)."""
    return [(c, f" {c} ") for c in chars]


# Words nltk splits in two (Robert MacIntyre's contractions).
_SPLIT_WORDS = (
    ("can", "not"), ("d", "'ye"), ("gim", "me"), ("gon", "na"), ("got", "ta"), ("lem", "me"), ("more", "'n"),
)  # fmt: skip

# (pattern, replacement) in nltk's order; a str pattern is literal, a Regex one is the backend's regex.
_TREEBANK_RULES: tuple[tuple[str | Regex, str], ...] = (
    # -- starting quotes --
    *_isolate("\u00ab\u201c\u2018\u201e"),
    _insert_space(r"(?<!`)(?=`)"),  # a run of backticks is padded as a whole
    _insert_space(r"(?<=`)(?!`)"),
    (Regex(r'\A"'), "``"),
    ("``", " `` "),
    (Regex(r"""(?<=[ (\[{<])(?:"|'')"""), " `` "),
    (Regex(rf"{_NOT_AFTER_WORD}'(?!(?:re|ve|ll|m|t|s|d|n){_NOT_BEFORE_WORD})(?={_PY_WORD})"), "' "),
    # -- punctuation --
    _insert_space(rf"(?<=[^.])(?=\.{_FINAL})"),  # the caption's final period
    _insert_space(rf"(?<=[^.]\.)(?={_FINAL})"),
    _insert_space(rf"(?<={_AFTER_EVEN_RUN_OFFSET})(?=\P{{Nd}})"),  # ':' ',' not before a digit
    _insert_space(r"(?=[:,] )"),
    _insert_space(r"(?=[:,]\Z)"),  # a ':' or ',' ending the caption
    _insert_space(r"(?<=[:,])\Z"),
    _insert_space(r"(?<!\.)(?=\.\.)"),  # a run of 2+ periods is padded as a whole
    _insert_space(r"(?<=\.\.)(?!\.)"),
    *_isolate(";@#$%&\u2012\u2013\u2014\u2015"),
    _insert_space(r"""(?<=[^.])(?=\.[\])}>"']*""" + rf"{_PY_SPACE}*\Z)"),  # the final period, again
    *_isolate("?!"),
    _insert_space(r"(?<=[^'])(?=' )"),
    *_isolate("*[](){}<>"),
    ("--", " -- "),
    _insert_space(r"\A"),  # nltk pads the text with a space on each side here
    _insert_space(r"\z"),
    # -- ending quotes --
    *_isolate("\u00bb\u201d\u2019"),
    ("''", " '' "),
    ('"', " '' "),
    (Regex(rf"{_PY_SPACE}+"), " "),
    *_clitics(("'s", "'m", "'d", "'")),
    *_clitics(("'ll", "'re", "'ve", "n't")),
    # -- contractions (the caption is already lower-cased) --
    *(
        (Regex(rf"{_NOT_AFTER_WORD}{left}{right}{_NOT_BEFORE_WORD}"), f" {left} {right} ")
        for left, right in _SPLIT_WORDS
    ),
    (Regex(rf"{_NOT_AFTER_WORD}wanna(?= )"), " wan na "),
    *((Regex(rf"(?<= )'t{rest}{_NOT_BEFORE_WORD}"), f"'t {rest} ") for rest in ("is", "was")),
)


def scan_word_normalizer() -> normalizers.Normalizer:
    """Lower-case, then SCAN's word rule (nltk's Treebank rules); after it a caption's words are
    exactly its space-separated pieces."""
    replacements = [normalizers.Replace(pattern, content) for pattern, content in _TREEBANK_RULES]
    return normalizers.Sequence([normalizers.Lowercase(), *replacements])


class VocabularyFileError(UserError, ValueError):
    """A SCAN vocabulary file that cannot be read; the message names the file and the field."""


def read_scan_vocabulary(path: str | Path) -> dict[str, int]:
    """word -> id of a SCAN vocabulary file (`vocab/<name>_vocab.json`: `word2idx`, `idx2word`, `idx`).

    Checked: ids are 0..n-1, each once; `idx2word` is the inverse of `word2idx`; `idx` is n; `<pad>`,
    `<start>`, `<end>`, `<unk>` are ids 0-3. SCAN sizes its embedding table as n = len(word2idx).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as err:
        raise VocabularyFileError(f"{path}: vocabulary file not found") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VocabularyFileError(f"{path}: not a JSON file ({err})") from err
    if not isinstance(raw, dict) or not {"word2idx", "idx2word", "idx"} <= set(raw):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise VocabularyFileError(
            f"{path}: expected an object with word2idx, idx2word and idx; found {found}"
        )
    word2idx, idx2word = raw["word2idx"], raw["idx2word"]
    if not isinstance(word2idx, dict) or not all(
        isinstance(w, str) and type(i) is int for w, i in word2idx.items()
    ):
        raise VocabularyFileError(f"{path}: field word2idx must map words to integer ids")
    if sorted(word2idx.values()) != list(range(len(word2idx))):
        raise VocabularyFileError(
            f"{path}: field word2idx must use each id 0..{len(word2idx) - 1} exactly once"
        )
    if not isinstance(idx2word, dict) or {str(i): w for w, i in word2idx.items()} != idx2word:
        raise VocabularyFileError(f"{path}: field idx2word is not the inverse of word2idx")
    if raw["idx"] != len(word2idx):
        raise VocabularyFileError(
            f"{path}: field idx is {raw['idx']!r}, expected {len(word2idx)} (the word count)"
        )
    for i, token in enumerate(SPECIAL_TOKENS):
        if word2idx.get(token) != i:
            raise VocabularyFileError(
                f"{path}: field word2idx must map {token!r} to id {i}, found {word2idx.get(token)!r}"
            )
    return dict(word2idx)


def scan_word_tokenizer(
    path: str | Path, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """The word tokenizer of a SCAN vocabulary file: SCAN's ids and SCAN's word rule.

    A caption encodes as SCAN's data loader encodes it: `<start>`, the id of each word of nltk's
    `word_tokenize(caption.lower())` (`<unk>` if not in the vocabulary), `<end>`.
    """
    return word_tokenizer_from_vocab(read_scan_vocabulary(path), model_max_length, word_rule="scan")
