"""Evaluation over a split: gallery scoring and retrieval, attention metrics, two-stage search, pictures,
and whole model folders (`folder.py`: what `ccr evaluate` runs)."""
