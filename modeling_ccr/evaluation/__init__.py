"""Evaluation over a split: gallery scoring and retrieval, attention metrics, two-stage search, pictures."""
