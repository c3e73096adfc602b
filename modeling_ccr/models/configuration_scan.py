"""SCAN: Stacked Cross Attention (Lee et al., ECCV 2018), configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_matcher import MatcherConfig, check_choice, check_positive

SCAN_DIRECTIONS = ("t2i", "i2t")
SCAN_AGGREGATIONS = ("avg", "lse", "max", "sum")
SCAN_ATTENTION_NORMS = ("clipped_l2norm", "l2norm", "softmax", "none")


@strict
class ScanConfig(MatcherConfig):
    """SCAN options (docs/spec.md section 2) on top of the shared encoder and loss options.

    direction: "t2i" (words attend to regions) or "i2t" (regions attend to words).
    aggregation: how per-query relevances R_t become one score: "avg", "lse", "max" or "sum".
    lambda_softmax: inverse temperature lambda1 of the attention softmax over keys.
    lambda_lse: lambda2 of the LSE aggregation (ignored by the other aggregations).
    attention_norm: normalisation of the raw query-key scores over the query index before the
        softmax: "clipped_l2norm" (LeakyReLU 0.1 then l2, the published default), "l2norm",
        "softmax" or "none".
    """

    model_type = "xmatch_scan"

    direction: str = "t2i"
    aggregation: str = "avg"
    lambda_softmax: float = 9.0
    lambda_lse: float = 6.0
    attention_norm: str = "clipped_l2norm"

    def validate_architecture(self):
        super().validate_architecture()
        check_choice("direction", self.direction, SCAN_DIRECTIONS)
        check_choice("aggregation", self.aggregation, SCAN_AGGREGATIONS)
        check_choice("attention_norm", self.attention_norm, SCAN_ATTENTION_NORMS)
        check_positive("lambda_softmax", self.lambda_softmax)
        check_positive("lambda_lse", self.lambda_lse)
