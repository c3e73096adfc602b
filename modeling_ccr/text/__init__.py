"""Text: the word rule, the word-level tokenizers and the word -> sub-word token map."""
