"""Which tokens of an encoded caption carry each word of `split_words(caption)`.

Phrase spans (`first_word`, `num_words`) count words of `split_words(caption)`. With the word tokenizer
word i is token i + 1; a sub-word tokenizer (BERT's WordPiece: "snowboarder" -> "snow ##board ##er")
or a word tokenizer that splits differently ("mid-air" as one token) breaks that. The alignment goes
through the fast tokenizer's character offsets: a token belongs to every word whose characters it
overlaps, so a word has one or more tokens (none if truncated away), and a token may serve two words.

A word's attention row is then the combination of its tokens' rows (`combine_word_rows`): "mean"
(the default: a word attends where its pieces attend on average, and a word's row stays a distribution
when each piece's row is one) or "max" (a region counts as soon as any piece attends to it).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from .tokenization import split_words

WORD_COMBINE_MODES: tuple[str, ...] = ("mean", "max")
DEFAULT_WORD_COMBINE = "mean"

# `split_words` is `\w+|[^\w\s]` on the lower-cased caption; the pattern is case-blind, so matching the
# original caption gives the same words with character spans in the caption the tokenizer saw.
_WORD_SPANS = re.compile(r"\w+|[^\w\s]")


def word_char_spans(caption: str) -> list[tuple[int, int]]:
    """`(start, end)` character span in `caption` of each word of `split_words(caption)`."""
    spans = [m.span() for m in _WORD_SPANS.finditer(caption)]
    if len(spans) != len(split_words(caption)):
        raise ValueError(
            f"caption {caption!r}: lower-casing changes its words; cannot align them to characters"
        )
    return spans


def word_token_positions(
    tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_length: int | None = None
) -> list[list[list[int]]]:
    """For each caption, for each word of `split_words(caption)`, its token positions in `input_ids`.

    The captions must be encoded the same way as for the model (`data.collator.tokenize_captions`: right
    padding, so positions do not depend on the batch). `max_length` is the truncation length if any.
    """
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: it has no character offsets")
    encoded = tokenizer(
        list(captions),
        return_offsets_mapping=True,
        truncation=max_length is not None,
        max_length=max_length,
    )
    alignments = []
    for caption, offsets, special in zip(
        captions, encoded["offset_mapping"], _special_masks(encoded), strict=True
    ):
        words = word_char_spans(caption)
        # Words are disjoint and in order, so their ends are sorted: a binary search finds a token's first
        # overlapping word, keeping the alignment O(tokens x log words) instead of tokens x words.
        word_ends = [word_end for _, word_end in words]
        positions: list[list[int]] = [[] for _ in words]
        for token, ((start, end), is_special) in enumerate(zip(offsets, special, strict=True)):
            if is_special or end <= start:
                continue
            w = bisect.bisect_right(word_ends, start)
            while w < len(words) and words[w][0] < end:
                positions[w].append(token)
                w += 1
        alignments.append(positions)
    return alignments


def _special_masks(encoded) -> list[list[bool]]:
    """True at the tokens the tokenizer added around the text (`<start>`, `[CLS]`, ...): no word of their own."""
    return [[word is None for word in encoded.word_ids(b)] for b in range(len(encoded["input_ids"]))]


def combine_word_rows(
    rows: torch.Tensor, positions: Sequence[Sequence[int]], combine: str = DEFAULT_WORD_COMBINE
) -> torch.Tensor:
    """`(n_words, n_keys)` word rows from `(n_tokens, n_keys)` token rows; `positions[w]` are word w's
    tokens (from `word_token_positions`). A word with no token (truncated) gets a row of zeros."""
    if combine not in WORD_COMBINE_MODES:
        raise ValueError(f"combine must be one of {list(WORD_COMBINE_MODES)}, got {combine!r}")
    out = rows.new_zeros(len(positions), rows.shape[-1])
    for w, tokens in enumerate(positions):
        if tokens:
            pieces = rows[list(tokens)]
            out[w] = pieces.mean(dim=0) if combine == "mean" else pieces.max(dim=0).values
    return out
