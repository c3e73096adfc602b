"""VSE-infinity (Chen et al., CVPR 2021): GPO-pooled global embeddings of regions and words, cosine score."""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from .configuration_vse_infty import VseInftyConfig
from .encoders import l2_normalize
from .modeling_matcher import GlobalEmbeddingScoring, MatcherPreTrainedModel
from .modeling_sgraf import masked_batch_norm
from .pooling import GeneralizedPooling


class VseInftyRegionMlp(nn.Module):
    """VSE-infinity's residual branch for precomputed region features: Linear -> BatchNorm -> ReLU -> Linear.

    features `(batch, n_regions, feature_dim)`, mask `(batch, n_regions)` bool -> `(batch, n_regions,
    embed_dim)`. The batch norm's statistics see only real regions (the published code has no padded
    regions; with padding, ours keeps them out), zero at padded regions.
    """

    def __init__(self, feature_dim: int, embed_dim: int):
        super().__init__()
        hidden = embed_dim // 2
        self.hidden = nn.Linear(feature_dim, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.output = nn.Linear(hidden, embed_dim)

    def reset_parameters(self) -> None:
        # The published MLP keeps PyTorch's defaults: kaiming-uniform(a=sqrt(5)) weights, uniform biases,
        # written out as transformers' init does not reach them.
        for linear in (self.hidden, self.output):
            bound = linear.in_features**-0.5
            init.kaiming_uniform_(linear.weight, a=5**0.5)
            init.uniform_(linear.bias, -bound, bound)
        init.ones_(self.norm.weight)
        init.zeros_(self.norm.bias)
        init.zeros_(self.norm.running_mean)
        init.ones_(self.norm.running_var)
        init.zeros_(self.norm.num_batches_tracked)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(features).transpose(1, 2)  # (batch, hidden, n_regions)
        hidden = torch.relu(masked_batch_norm(self.norm, hidden, mask.unsqueeze(1))).transpose(1, 2)
        return self.output(hidden) * mask.unsqueeze(-1).to(hidden.dtype)


class VseInftyModel(GlobalEmbeddingScoring, MatcherPreTrainedModel):
    """Score = cos(GPO of an image's region embeddings, GPO of a caption's word embeddings).

    Regions: linear projection (+ the residual MLP with `region_mlp`); words: the word GRU (mean of both
    directions) or a transformers encoder with a linear projection. Each side has its own GPO.
    """

    config_class = VseInftyConfig

    def __init__(self, config: VseInftyConfig):
        super().__init__(config)
        self.region_mlp = (
            VseInftyRegionMlp(config.feature_dim, config.embed_dim) if config.region_mlp else None
        )
        gpo = dict(
            position_dim=config.gpo_position_dim,
            hidden_dim=config.gpo_hidden_dim,
            temperature=config.gpo_temperature,
        )
        self.region_pooling = GeneralizedPooling(**gpo)
        self.word_pooling = GeneralizedPooling(**gpo)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (GeneralizedPooling, VseInftyRegionMlp)):
            module.reset_parameters()

    def get_image_features(self, region_features: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
        """Region embeddings `(batch, n_regions, embed_dim)`, zero at padded regions: fc(x) (+ MLP(x))."""
        self._check_region_features(region_features, region_mask)
        region_mask = region_mask.bool()
        regions = self.region_encoder.projection(region_features)
        if self.region_mlp is not None:
            regions = regions + self.region_mlp(region_features, region_mask)
        if self.config.normalize_regions:
            regions = l2_normalize(regions)
        return regions * region_mask.unsqueeze(-1).to(regions.dtype)

    def image_embedding(self, image_embeds: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
        """The global image vector `(batch, embed_dim)`, l2-normalised, of region embeddings."""
        return l2_normalize(self.region_pooling(image_embeds, region_mask))

    def text_embedding(self, text_embeds: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """The global caption vector `(batch, embed_dim)`, l2-normalised, of word embeddings."""
        return l2_normalize(self.word_pooling(text_embeds, word_mask))
