"""DAMSM: AttnGAN's Deep Attentional Multimodal Similarity Model (Xu et al., CVPR 2018), configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_matcher import MatcherConfig, check_positive


@strict
class DamsmConfig(MatcherConfig):
    """DAMSM's word-region attention similarity with its three smoothing factors.

    gamma1: sharpness of each word's attention over regions (after normalising scores over words).
    gamma2: how strongly the pair score R(Q, D) = log(sum_t exp(gamma2 R_t))^(1/gamma2) favours the most
        relevant words.
    gamma3 is the scale of DAMSM's softmax loss over the batch: here `loss="infonce"` with
    `temperature = 1 / gamma3` (default gamma3 = 10).
    normalize_regions / normalize_words default to False: AttnGAN attends with raw dot products of
    unnormalised features (with unit vectors, the softmax over words leaves gamma1 too little range to
    focus the attention); the relevance R_t is a cosine either way.
    """

    model_type = "xmatch_damsm"

    gamma1: float = 4.0
    gamma2: float = 5.0
    normalize_regions: bool = False
    normalize_words: bool = False
    loss: str = "infonce"
    temperature: float = 0.1

    def validate_architecture(self):
        super().validate_architecture()
        check_positive("gamma1", self.gamma1)
        check_positive("gamma2", self.gamma2)
