"""BFAN: Bidirectional Focal Attention Network (Liu et al., ACM MM 2019), configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_matcher import MatcherConfig, check_choice, check_positive
from .configuration_scan import SCAN_ATTENTION_NORMS

BFAN_FOCAL_RULES = ("equal", "prob")
BFAN_DIRECTIONS = ("both", "t2i", "i2t")


@strict
class BfanConfig(MatcherConfig):
    """BFAN options (docs/spec.md section 2) on top of the shared encoder and loss options.

    focal: how the focal step scores each key against the others: "equal" F_tj = n a_tj - sum_k a_tk,
        or "prob" F_tj = sum_k (a_tj - a_tk) sqrt(a_tk); keys with F_tj <= 0 are dropped.
    direction: "both" (the paper: t2i mean relevance + i2t mean relevance), "t2i" or "i2t" only.
    lambda_softmax / attention_norm: SCAN's pre-attention (lambda1 = 20 in BFAN).
    """

    model_type = "xmatch_bfan"

    focal: str = "equal"
    direction: str = "both"
    lambda_softmax: float = 20.0
    attention_norm: str = "clipped_l2norm"

    def validate_architecture(self):
        super().validate_architecture()
        check_choice("focal", self.focal, BFAN_FOCAL_RULES)
        check_choice("direction", self.direction, BFAN_DIRECTIONS)
        check_choice("attention_norm", self.attention_norm, SCAN_ATTENTION_NORMS)
        check_positive("lambda_softmax", self.lambda_softmax)

    @property
    def directions(self) -> tuple[str, ...]:
        return ("t2i", "i2t") if self.direction == "both" else (self.direction,)
