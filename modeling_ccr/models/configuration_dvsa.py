"""DVSA: Deep Visual-Semantic Alignments (Karpathy and Fei-Fei, CVPR 2015), configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_matcher import MatcherConfig, check_choice

DVSA_AGGREGATIONS = ("sum", "avg")


@strict
class DvsaConfig(MatcherConfig):
    """DVSA's image-sentence score: each word's best region dot product, pooled over words.

    aggregation: "sum" over words (the paper's score) or "avg" (length-independent).
    """

    model_type = "xmatch_dvsa"

    aggregation: str = "sum"

    def validate_architecture(self):
        super().validate_architecture()
        check_choice("aggregation", self.aggregation, DVSA_AGGREGATIONS)
