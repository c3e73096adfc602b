"""An ensemble of matchers as one model: the mean of the members' similarity matrices.

The published SCAN result averages a t2i-AVG and an i2t-LSE model, and SGRAF's averages SGR and SAF.
`EnsembleModel` holds the members in one checkpoint, so `AutoModel.from_pretrained` loads the ensemble
and the evaluation code scores it like any single model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from .backbones import SINGLE_BACKBONES
from .configuration_ensemble import EnsembleConfig, member_entry
from .modeling_matcher import GalleryScoring, MatcherOutput, MatcherPreTrainedModel


class EnsembleModel(GalleryScoring, PreTrainedModel):
    """Members score pairs independently; the ensemble's score is their mean.

    Embeddings of the members are concatenated along the last dim (`(batch, n, sum of embed_dims)`), so
    encoding a gallery once serves every member. Training sums the members' own losses, which trains each
    member as it would be trained alone.
    """

    config_class = EnsembleConfig
    base_model_prefix = "ensemble"
    main_input_name = "region_features"
    input_modalities = ("image", "text")

    def __init__(self, config: EnsembleConfig):
        super().__init__(config)
        model_classes = {config_class.model_type: model for config_class, model in SINGLE_BACKBONES.values()}
        self.members = nn.ModuleList(
            model_classes[member.model_type](member) for member in config.member_configs
        )
        self.post_init()

    @classmethod
    def from_members(cls, members: Sequence[MatcherPreTrainedModel]) -> EnsembleModel:
        """An ensemble holding copies of trained member models (their weights and configs)."""
        ensemble = cls(EnsembleConfig(members=[member_entry(member.config) for member in members]))
        for own, trained in zip(ensemble.members, members, strict=True):
            own.load_state_dict(trained.state_dict())
        return ensemble

    @property
    def attention_direction(self) -> str:
        """The direction of the attention `forward` returns: that of the first member with attention."""
        return next((m.attention_direction for m in self.members if m.config.has_cross_attention), "t2i")

    def split_embeds(self, embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Concatenated embeddings `(..., sum of embed_dims)` -> one `(..., embed_dim)` view per member."""
        return embeds.split([member.config.embed_dim for member in self.members], dim=-1)

    def get_image_features(self, region_features: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
        """`(batch, n_regions, sum of embed_dims)`: every member's region embeddings, concatenated."""
        return torch.cat([m.get_image_features(region_features, region_mask) for m in self.members], dim=-1)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`(batch, n_tokens, sum of embed_dims)`: every member's word embeddings, concatenated."""
        return torch.cat([m.get_text_features(input_ids, attention_mask) for m in self.members], dim=-1)

    def score_pairs(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Mean of the members' `(n_images, n_captions)` scores, from concatenated embeddings."""
        scores = [
            member.score_pairs(images, region_mask, texts, word_mask)
            for member, images, texts in zip(
                self.members, self.split_embeds(image_embeds), self.split_embeds(text_embeds), strict=True
            )
        ]
        return torch.stack(scores).mean(dim=0)

    def forward(
        self,
        region_features: torch.Tensor,
        region_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_loss: bool = False,
        output_attentions: bool = False,
        gather_negatives: bool = False,
        image_index: torch.Tensor | None = None,
        **kwargs,
    ) -> MatcherOutput:
        """Each member's forward (inputs as in `MatcherPreTrainedModel.forward`); losses and loss terms
        are summed over the members, scores averaged, embeddings concatenated, and the attention is the
        first attention member's."""
        outputs = [
            member(
                region_features,
                region_mask,
                input_ids,
                attention_mask,
                return_loss=return_loss,
                output_attentions=output_attentions,
                gather_negatives=gather_negatives,
                image_index=image_index,
            )
            for member in self.members
        ]
        logits = torch.stack([output.logits_per_image for output in outputs]).mean(dim=0)
        return MatcherOutput(
            loss=summed(outputs, "loss"),
            logits_per_image=logits,
            logits_per_text=logits.T,
            image_embeds=torch.cat([output.image_embeds for output in outputs], dim=-1),
            text_embeds=torch.cat([output.text_embeds for output in outputs], dim=-1),
            region_mask=outputs[0].region_mask,
            word_mask=outputs[0].word_mask,
            attentions=next((o.attentions for o in outputs if o.attentions is not None), None),
            base_loss=summed(outputs, "base_loss"),
            ccr_loss=summed(outputs, "ccr_loss"),
            ccs_loss=summed(outputs, "ccs_loss"),
            ccr_active_fraction=averaged(outputs, "ccr_active_fraction"),
            ccs_active_fraction=averaged(outputs, "ccs_active_fraction"),
            global_loss=summed(outputs, "global_loss"),
            global_contrastive_loss=summed(outputs, "global_contrastive_loss"),
            global_distill_loss=summed(outputs, "global_distill_loss"),
        )


def summed(outputs: list[MatcherOutput], name: str) -> torch.Tensor | None:
    values = [getattr(output, name) for output in outputs if getattr(output, name) is not None]
    return sum(values) if values else None


def averaged(outputs: list[MatcherOutput], name: str) -> torch.Tensor | None:
    values = [getattr(output, name) for output in outputs if getattr(output, name) is not None]
    return sum(values) / len(values) if values else None
