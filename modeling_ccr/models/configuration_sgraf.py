"""SGRAF: Similarity Graph Reasoning and Attention Filtration (Diao et al., AAAI 2021), configurations.

`SgrafConfig` holds what SGR and SAF share; `SgrConfig` and `SafConfig` are the two registered models.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_matcher import MatcherConfig, check_choice, check_positive
from .configuration_scan import SCAN_ATTENTION_NORMS


@strict
class SgrafConfig(MatcherConfig):
    """Options SGR and SAF share (docs/spec.md section 2) on top of the shared encoder and loss options.

    lambda_softmax: inverse temperature lambda1 of the t2i SCAN attention (words attend to regions).
    attention_norm: normalisation of the word-region scores over the words before the softmax (as in
        `ScanConfig`); "clipped_l2norm" is SGRAF's.
    sim_dim: size of the similarity vectors (local s_t and global s_g).
    n_regions: regions per image. The region self-attention pooling batch-normalises over the region
        axis (one channel per region position), so every image batch must have exactly this many
        region slots (36 in the bottom-up-attention features).
    dropout: dropout rate after the Tanh layers of the self-attention pooling.
    """

    model_type = "xmatch_sgraf"

    lambda_softmax: float = 9.0
    attention_norm: str = "clipped_l2norm"
    sim_dim: int = 256
    n_regions: int = 36
    dropout: float = 0.4

    def validate_architecture(self):
        super().validate_architecture()
        check_choice("attention_norm", self.attention_norm, SCAN_ATTENTION_NORMS)
        check_positive("lambda_softmax", self.lambda_softmax)
        check_positive("sim_dim", self.sim_dim)
        check_positive("n_regions", self.n_regions)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"config field 'dropout' must be in [0, 1), got {self.dropout!r}")


@strict
class SgrConfig(SgrafConfig):
    """SGR: graph reasoning over the similarity vectors.

    sgr_steps: number of reasoning steps, each with its own weights.
    """

    model_type = "xmatch_sgr"

    sgr_steps: int = 3

    def validate_architecture(self):
        super().validate_architecture()
        check_positive("sgr_steps", self.sgr_steps)


@strict
class SafConfig(SgrafConfig):
    """SAF: attention filtration of the similarity vectors (no options beyond `SgrafConfig`)."""

    model_type = "xmatch_saf"
