"""CHAN: Cross-modal Hard Aligning Network (Pan et al., "Fine-grained Image-text Matching by Cross-modal Hard
Aligning Network", CVPR 2023): configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_matcher import MatcherConfig, check_choice, check_positive

CHAN_DIRECTIONS = ("t2i", "i2t", "both")
CHAN_POOLINGS = ("lse", "mean", "max", "sum", "softmax")
CHAN_CONSTRAINT_ASSIGNMENTS = ("hard", "soft")


@strict
class ChanConfig(MatcherConfig):
    """CHAN options (docs/spec.md section 2) on top of the shared encoder and loss options.

    direction: "t2i" (CHAN's visual hard-assignment coding: each word is scored by its single best
        region, the published setting), "i2t" (its textual coding: each region by its best word) or
        "both" (the sum of the two scores).
    pooling: how the per-query best similarities become one score: "lse" (log-sum-exp of s / tau, not
        rescaled, as in CHAN's code; the published BiGRU setting), "mean" (the published BERT setting),
        "max", "sum" or "softmax" (sum of softmax(s / tau) * s).
    pooling_temperature: tau of the "lse" and "softmax" poolings (CHAN's `belta`, 0.1).
    region_self_attention: refine the projected regions with CHAN's pre-norm self-attention block
        x + MHA(LayerNorm(x)) before l2 normalisation (the published BiGRU setting); False: projection only.
    self_attention_heads: heads of that block (8 in CHAN's code); must divide embed_dim.
    constraint_assignment (ours, docs/constraints.md): what CCR/CCS constrain, since a hard assignment
        has no weights to push: "hard" (default) the one-hot assignment itself, so the re-sourced content
        of CCR is the mean of the keys the assignment did not choose and CCS re-assigns over the swapped
        key set; "soft" the softmax of the query-key similarities at `assignment_temperature` (CHAN's soft
        coding), whose argmax is the hard assignment.
    assignment_temperature: temperature of that softmax (CHAN's `alpha`, 0.1).

    The published loss is the hinge with margin 0.05 (the default here) on the hardest negative after a
    one-epoch summed-hinge warm-up (`training.hinge_warmup_steps` in the run config).
    """

    model_type = "xmatch_chan"

    margin: float = 0.05
    direction: str = "t2i"
    pooling: str = "lse"
    pooling_temperature: float = 0.1
    region_self_attention: bool = True
    self_attention_heads: int = 8
    constraint_assignment: str = "hard"
    assignment_temperature: float = 0.1

    def validate_architecture(self):
        super().validate_architecture()
        check_choice("direction", self.direction, CHAN_DIRECTIONS)
        check_choice("pooling", self.pooling, CHAN_POOLINGS)
        check_choice("constraint_assignment", self.constraint_assignment, CHAN_CONSTRAINT_ASSIGNMENTS)
        for name in ("pooling_temperature", "self_attention_heads", "assignment_temperature"):
            check_positive(name, getattr(self, name))
        if self.region_self_attention and self.embed_dim % self.self_attention_heads:
            raise ValueError(
                f"config field 'self_attention_heads' must divide embed_dim={self.embed_dim}, "
                f"got {self.self_attention_heads}"
            )

    @property
    def directions(self) -> tuple[str, ...]:
        return ("t2i", "i2t") if self.direction == "both" else (self.direction,)
