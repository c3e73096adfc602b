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

Known divergences from `split_words`, found by sweeping every code point: a word-final capital sigma
(Python lower-cases it to the final form, the backend per character to the medial form) and
characters that Python's Unicode database does not assign yet. Neither occurs in English captions.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# A word is a run of letters/digits/underscore; every other non-space character is a word of its own.
_WORD_PATTERN = re.compile(r"\w+|[^\w\s]")

# The same rule for the `tokenizers` backend (see the module docstring for why it is spelled this way).
_BACKEND_WORD_PATTERN = r"[\p{L}\p{N}_]+|[^\p{L}\p{N}_\s\x1c-\x1f]"

PAD_TOKEN, START_TOKEN, END_TOKEN, UNK_TOKEN = "<pad>", "<start>", "<end>", "<unk>"
# Fixed ids: padding is 0 so that zero-initialised id buffers are padding.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, START_TOKEN, END_TOKEN, UNK_TOKEN)

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
    vocab: dict[str, int], model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """Wrap a word -> id mapping (specials at ids 0-3) as a transformers fast tokenizer."""
    for i, token in enumerate(SPECIAL_TOKENS):
        if vocab.get(token) != i:
            raise ValueError(f"vocab must map {token!r} to id {i}, found {vocab.get(token)!r}")
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split(
        Regex(_BACKEND_WORD_PATTERN), behavior="removed", invert=True
    )
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
