"""VSE-infinity (Chen et al., "Learning the Best Pooling Strategy for Visual Semantic Embedding", CVPR 2021): configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_matcher import MatcherConfig, check_positive


@strict
class VseInftyConfig(MatcherConfig):
    """VSE-infinity: regions and words each pooled by GPO into one vector, cosine score (docs/spec.md section 2).

    A global-embedding matcher: there is no cross-attention, so CCR/CCS must stay off.

    region_mlp: add VSE-infinity's two-layer MLP (Linear -> BatchNorm -> ReLU -> Linear, hidden size
        embed_dim // 2) to the linear region projection, as its code does for precomputed region features;
        False keeps the projection alone (its grid / backbone variant).
    gpo_position_dim / gpo_hidden_dim: size of GPO's sinusoidal position encodings and of its bi-GRU
        (32 and 32 in the published code).
    gpo_temperature: temperature of GPO's softmax over ranks (0.1 in the published code).

    Defaults that differ from the shared ones, as in the published code: regions and words are NOT
    l2-normalised before pooling (the pooled vectors are); `max_violation` as everywhere, with the
    summed-hinge warm-up of its first epoch set by the run config (`training.hinge_warmup_steps`).
    """

    model_type = "xmatch_vse_infty"
    has_cross_attention = False

    normalize_regions: bool = False
    normalize_words: bool = False
    region_mlp: bool = True
    gpo_position_dim: int = 32
    gpo_hidden_dim: int = 32
    gpo_temperature: float = 0.1

    def validate_architecture(self):
        super().validate_architecture()
        for name in ("gpo_position_dim", "gpo_hidden_dim", "gpo_temperature"):
            check_positive(name, getattr(self, name))
        if self.gpo_position_dim % 2:
            raise ValueError(
                f"config field 'gpo_position_dim' must be even (sinusoidal encodings), got {self.gpo_position_dim}"
            )
        if self.region_mlp and self.embed_dim < 2:
            raise ValueError(
                f"region_mlp needs embed_dim >= 2 (hidden size embed_dim // 2), got {self.embed_dim}"
            )
