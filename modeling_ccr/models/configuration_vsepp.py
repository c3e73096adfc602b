"""VSE++ (Faghri et al., BMVC 2018) on region features: configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_matcher import MatcherConfig


@strict
class VseppConfig(MatcherConfig):
    """VSE++ with mean-pooled regions and words (docs/spec.md section 2): the non-attention baseline.

    Only the shared encoder and loss options apply; there is no cross-attention, so CCR/CCS must stay off.
    """

    model_type = "xmatch_vsepp"
    has_cross_attention = False
