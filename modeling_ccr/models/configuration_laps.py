"""LAPS: Linguistic-Aware Patch Slimming (Fu et al., "Linguistic-Aware Patch Slimming Framework for
Fine-grained Cross-Modal Alignment", CVPR 2024): configuration."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict

from .configuration_matcher import MatcherConfig, check_choice, check_positive

LAPS_DIRECTIONS = ("t2i", "i2t", "both")
LAPS_CONSTRAINT_ATTENTIONS = ("slimmed", "patches")


@strict
class LapsConfig(MatcherConfig):
    """LAPS options (docs/spec.md section 2, docs/backbones.md) on top of the shared encoder and loss options.

    For each caption, every image's patch tokens are slimmed before they are aligned with its words:
    patches are ranked by their saliency (cosine with the image's mean patch) plus their relevance to the
    caption (cosine with the caption's mean word), the top `keep_ratio` are kept and aggregated into
    `aggregated_tokens` tokens by a learned softmax mixing, and the dropped ones are fused into one extra
    token (softmax of their ranking scores). The score is the sparse patch-word alignment of the words
    with those tokens.

    num_patches: spatial patches per image the aggregation is sized for (LAPS's `num_patches`: 196 for
        ViT-B/16 at 224 px, 49 for Swin-B); images may have fewer (padded) regions.
    keep_ratio: share of an image's (valid, spatial) patches kept: ceil(n * keep_ratio) (LAPS's
        `sparse_ratio`; 0.5 for ViT-B/16, 0.8 for Swin-B).
    aggregation_ratio: the kept patches are aggregated into int(num_patches * aggregation_ratio *
        keep_ratio) tokens (LAPS's `aggr_ratio`; 0.4 for ViT-B/16, 0.6 for Swin-B).
    aggregation_hidden_ratio: hidden width of the aggregation MLP as a share of embed_dim (LAPS: 0.2).
    cls_token: the first region of every image is a global token ([CLS] of a ViT) that skips the slimming
        and is aligned beside the slimmed tokens (LAPS detects it by a non-square token count; our vision
        tower gives patch grids without it, so False by default).
    direction: "both" (LAPS: the t2i term, each word's best token averaged over the words, plus the i2t
        term, each token's best word averaged over the tokens), "t2i" or "i2t" alone.
    leaky_slope: negative slope of the leaky ReLU applied to the patch-word cosines (LAPS: 0.1).
    constraint_attention (ours, docs/constraints.md; the paper has no attention constraint): what CCR/CCS
        and the attention metrics see, always words over the image's ORIGINAL regions: "slimmed" (default)
        the word's one-hot choice of slimmed token composed with that token's mixing weights over the
        patches (what the score uses; when CCS recomputes attention over a swapped key set, the slimming
        cannot be re-run from logits, so it assigns each word its highest-logit patch); "patches" the
        one-hot best patch of each word (t2i) and each patch's best word (i2t) by cosine, no slimming.

    Defaults that differ from the shared ones, as in the published code: 512-d embeddings; patches and
    words are NOT l2-normalised by the encoders (the slimming averages and mixes the raw projections and
    normalises its tokens itself); hinge margin 0.2 on the hardest negative after a one-epoch
    summed-hinge warm-up (`training.hinge_warmup_steps` in the run config).
    """

    model_type = "xmatch_laps"

    embed_dim: int = 512
    normalize_regions: bool = False
    normalize_words: bool = False
    num_patches: int = 196
    keep_ratio: float = 0.5
    aggregation_ratio: float = 0.4
    aggregation_hidden_ratio: float = 0.2
    cls_token: bool = False
    direction: str = "both"
    leaky_slope: float = 0.1
    constraint_attention: str = "slimmed"

    def validate_architecture(self):
        super().validate_architecture()
        check_choice("direction", self.direction, LAPS_DIRECTIONS)
        check_choice("constraint_attention", self.constraint_attention, LAPS_CONSTRAINT_ATTENTIONS)
        check_positive("num_patches", self.num_patches)
        check_positive("leaky_slope", self.leaky_slope, allow_zero=True)
        for name in ("keep_ratio", "aggregation_ratio", "aggregation_hidden_ratio"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"config field {name!r} must be in (0, 1], got {value!r}")
        if self.aggregated_tokens < 1:
            raise ValueError(
                "config fields num_patches * aggregation_ratio * keep_ratio must give at least one "
                f"aggregated token, got int({self.num_patches} * {self.aggregation_ratio} * {self.keep_ratio}) = 0"
            )
        if self.aggregation_hidden_dim < 1:
            raise ValueError(
                "config field 'aggregation_hidden_ratio' must give a hidden width >= 1, got "
                f"int({self.embed_dim} * {self.aggregation_hidden_ratio}) = 0"
            )

    @property
    def aggregated_tokens(self) -> int:
        """N_s, the tokens the kept patches are aggregated into (LAPS's `keeped_patches`)."""
        return int(self.num_patches * self.aggregation_ratio * self.keep_ratio)

    @property
    def aggregation_hidden_dim(self) -> int:
        return int(self.embed_dim * self.aggregation_hidden_ratio)

    def kept_patches(self, n_patches: int) -> int:
        """How many of an image's n valid spatial patches are kept: ceil(n * keep_ratio)."""
        return math.ceil(n_patches * self.keep_ratio)

    @property
    def directions(self) -> tuple[str, ...]:
        return ("t2i", "i2t") if self.direction == "both" else (self.direction,)
