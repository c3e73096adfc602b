"""LAPS (Fu et al., CVPR 2024): per caption, each image's patches are slimmed (linguistic-aware selection,
learned aggregation of the kept patches, one fused token for the dropped ones), then the slimmed tokens and
the words are matched by the sparse (max-based) patch-word alignment in both directions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_laps import LapsConfig
from .constraints import AttentionFunction, MatchedAttention
from .cross_attention import matched_view
from .encoders import NORM_EPS, l2_normalize
from .modeling_dvsa import best_region_attention
from .modeling_matcher import MatcherPreTrainedModel


class LapsAggregation(nn.Module):
    """LAPS's aggregation network: N_s learned mixings of the kept patches.

    logits = MLP(LayerNorm(x)) `(..., n_patches, N_s)` (Linear -> GELU -> Linear, hidden width
    `hidden_dim`), multiplied by a learned scalar `scale`; each of the N_s aggregated tokens is the
    softmax-over-kept-patches mixture of the patches (`slim_patches`).
    """

    def __init__(self, embed_dim: int, hidden_dim: int, n_tokens: int):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.hidden = nn.Linear(embed_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, n_tokens)
        self.scale = nn.Parameter(torch.ones(()))

    def reset_parameters(self) -> None:
        # PyTorch's own initialisation of these layers (what LAPS trains from), through transformers' init.
        init.ones_(self.norm.weight)
        init.zeros_(self.norm.bias)
        for linear in (self.hidden, self.output):
            bound = linear.in_features**-0.5
            init.kaiming_uniform_(linear.weight, a=5**0.5)
            init.uniform_(linear.bias, -bound, bound)
        init.ones_(self.scale)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches `(n_images, n_patches, D)` -> mixing logits `(n_images, N_s, n_patches)`."""
        logits = self.output(F.gelu(self.hidden(self.norm(patches))))
        return logits.transpose(1, 2) * self.scale


@dataclass
class SlimmedPatches:
    """The slimmed tokens of every (image, caption) pair, as mixtures of the image's original regions.

    mixing: `(n_images, n_captions, T, n_regions)`, T = [1 (cls)] + N_s + 1 (the fused token): each token
        as a convex combination of the image's ORIGINAL regions (rows of valid tokens sum to 1);
    token_mask: `(n_images, n_captions, T)` bool (the fused token is invalid when no patch was dropped);
    kept: `(n_images, n_captions, n_regions)` bool, the spatial patches the selection kept;
    regions: `(n_images, n_regions, D)`, the raw region projections the mixing is over.
    """

    mixing: torch.Tensor
    token_mask: torch.Tensor
    kept: torch.Tensor
    regions: torch.Tensor

    @property
    def tokens(self) -> torch.Tensor:
        """The l2-normalised tokens `(n_images, n_captions, T, D)`."""
        return l2_normalize(mixed_tokens(self.mixing, self.regions))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim -2 of x `(..., n, D)` at mask `(..., n)` True -> `(..., D)`."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=-2) / weights.sum(dim=-2).clamp_min(1.0)


def slim_patches(
    patches: torch.Tensor,
    patch_mask: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    aggregation: LapsAggregation,
    keep_ratio: float,
    cls_token: bool,
    paired: bool = False,
) -> SlimmedPatches:
    """LAPS's linguistic-aware patch slimming of every image for every caption (or, `paired`, of image i for
    caption i only: then n_captions is 1 in the result).

    patches `(n_images, n_regions, D)` (raw projections), patch_mask `(n_images, n_regions)` bool, words
    `(n_captions, n_words, D)`, word_mask `(n_captions, n_words)` bool. With `cls_token` region 0 is a global
    token that skips the selection. For spatial patch p_j (valid ones only):
    - saliency_j = cos(mean_k p_k, p_j); relevance_cj = cos(mean_t w_ct, p_j); score = saliency + relevance,
      computed without gradient (LAPS ranks under no_grad);
    - the ceil(n_valid * keep_ratio) highest scores are kept (ties: the lower index first);
    - aggregated token k = sum_j softmax_j over kept(scale * MLP(LN(p_j))_k) p_j;
    - fused token = sum_j softmax_j over dropped(score_j) p_j.
    """
    if cls_token:
        if not bool(patch_mask[:, 0].all()) or not bool(patch_mask[:, 1:].any(dim=1).all()):
            raise ValueError(
                "cls_token=True needs every image's region 0 ([CLS]) valid and at least one valid patch after it"
            )
        cls = patches[:, :1]
        patches, patch_mask = patches[:, 1:], patch_mask[:, 1:]
    n_patches = patches.shape[1]
    with torch.no_grad():
        normed = l2_normalize(patches)
        saliency = (normed * l2_normalize(masked_mean(patches, patch_mask)).unsqueeze(1)).sum(dim=-1)
        caption_means = l2_normalize(masked_mean(words, word_mask))  # (n_captions, D)
        if paired:
            relevance = (normed * caption_means.unsqueeze(1)).sum(dim=-1).unsqueeze(1)  # (images, 1, L)
        else:
            relevance = torch.einsum("ild,cd->icl", normed, caption_means)
        valid = patch_mask.unsqueeze(1)
        score = (saliency.unsqueeze(1) + relevance).masked_fill(~valid, float("-inf"))
        order = score.argsort(dim=-1, descending=True, stable=True)
        positions = torch.arange(n_patches, device=score.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)
        # LAPS's math.ceil(L * sparse_ratio), in float64 so the count is the Python one.
        n_keep = torch.ceil(patch_mask.sum(dim=1).double() * keep_ratio).long()
        kept = rank < n_keep[:, None, None]  # padded patches rank after every valid one
        dropped = valid & ~kept
        fused_weights = torch.softmax(score.masked_fill(~dropped, float("-inf")), dim=-1)
        fused_weights = torch.where(dropped, fused_weights, torch.zeros_like(fused_weights))  # no NaN rows
    logits = aggregation(patches).unsqueeze(1)  # (images, 1, N_s, L)
    aggregation_weights = torch.softmax(logits.masked_fill(~kept.unsqueeze(2), float("-inf")), dim=-1)
    mixing = torch.cat(
        [aggregation_weights, fused_weights.unsqueeze(2)], dim=2
    )  # (images, captions, N_s+1, L)
    token_mask = torch.cat(
        [torch.ones_like(mixing[..., :-1, 0], dtype=torch.bool), dropped.any(dim=-1, keepdim=True)], dim=-1
    )
    if cls_token:
        # Mixing over the original regions: [CLS] is region 0 itself; the others shift by one.
        mixing = F.pad(mixing, (1, 0))
        cls_row = torch.zeros_like(mixing[..., :1, :])
        cls_row[..., 0] = 1.0
        mixing = torch.cat([cls_row, mixing], dim=2)
        token_mask = torch.cat([torch.ones_like(token_mask[..., :1]), token_mask], dim=-1)
        kept = F.pad(kept, (1, 0))
        patches = torch.cat([cls, patches], dim=1)
    return SlimmedPatches(mixing, token_mask, kept, patches)


def mixed_tokens(mixing: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """The tokens `(n_images, n_captions, T, D)` that mixing `(n_images, n_captions, T, L)` makes of patches
    `(n_images, L, D)`: one (captions * T, L) @ (L, D) product per image (a broadcast
    `mixing @ patches[:, None]` would copy every image's patches once per caption first)."""
    return torch.bmm(mixing.flatten(1, 2), patches).view(*mixing.shape[:-1], patches.shape[-1])


def sparse_alignment_scores(
    slimmed: SlimmedPatches,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    directions: tuple[str, ...],
    leaky_slope: float,
) -> torch.Tensor:
    """LAPS's sparse patch-word alignment: `(n_images, n_captions)`.

    words `(n_captions, n_words, D)` l2-normalised with word_mask `(n_captions, n_words)` bool; v_k the
    slimmed tokens, l2-normalised. s_tk = leaky_relu(<w_t, v_k>); t2i = mean over words of max_k s_tk;
    i2t = mean over tokens of max_t s_tk; summed over `directions`.

    The tokens are never built: with v_k = sum_j M_kj p_j, <w_t, v_k> = sum_j M_kj <w_t, p_j> and
    |v_k|^2 = M_k G M_k^T (G the image's region Gram matrix), so the only D-wide work is the one product
    of all regions with all words that every cross-attention matcher pays (docs/scoring.md).
    """
    regions, mixing, token_mask = slimmed.regions, slimmed.mixing, slimmed.token_mask
    word_region = torch.einsum("ild,cwd->icwl", regions, words)
    token_word = word_region @ mixing.transpose(-1, -2)  # (images, captions, words, T)
    gram = regions @ regions.transpose(1, 2)
    squared_norms = (torch.bmm(mixing.flatten(1, 2), gram).view_as(mixing) * mixing).sum(dim=-1)
    # l2_normalize's x / (|x| + eps), applied to the products instead of the tokens.
    norms = squared_norms.clamp_min(0.0).sqrt() + NORM_EPS
    sims = F.leaky_relu(token_word / norms.unsqueeze(2), negative_slope=leaky_slope)
    words_valid = word_mask.unsqueeze(0).expand(sims.shape[0], -1, -1)  # (images, captions, words)
    total = sims.new_zeros(sims.shape[:2])
    if "t2i" in directions:
        best_token = sims.masked_fill(~token_mask.unsqueeze(2), float("-inf")).amax(dim=-1)
        total = total + masked_mean(best_token.unsqueeze(-1), words_valid).squeeze(-1)
    if "i2t" in directions:
        best_word = sims.masked_fill(~words_valid.unsqueeze(-1), float("-inf")).amax(dim=2)
        total = total + masked_mean(best_word.unsqueeze(-1), token_mask).squeeze(-1)
    return total


class LapsModel(MatcherPreTrainedModel):
    """LAPS: the score of (image, caption) is the sparse alignment (`sparse_alignment_scores`) of the words
    with the image's patches slimmed for that caption (`slim_patches`)."""

    config_class = LapsConfig

    def __init__(self, config: LapsConfig):
        super().__init__(config)
        self.aggregation = LapsAggregation(
            config.embed_dim, config.aggregation_hidden_dim, config.aggregated_tokens
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LapsAggregation):
            module.reset_parameters()

    def slim(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
        paired: bool = False,
    ) -> SlimmedPatches:
        """`slim_patches` with this model's aggregation and options."""
        config = self.config
        return slim_patches(
            image_embeds,
            region_mask.bool(),
            text_embeds,
            word_mask.bool(),
            self.aggregation,
            config.keep_ratio,
            config.cls_token,
            paired,
        )

    def score_pairs(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        slimmed = self.slim(image_embeds, region_mask, text_embeds, word_mask)
        return sparse_alignment_scores(
            slimmed,
            l2_normalize(text_embeds),
            word_mask.bool(),
            self.config.directions,
            self.config.leaky_slope,
        )

    def pair_scoring_bytes(self, n_regions: int, n_words: int, embed_dim: int) -> int:
        # Per pair: the mixing weights (softmax input, output, gradient-free copy, times the Gram matrix),
        # the word-region products and the token-word similarities (raw, leaky, masked); no D-wide tensor.
        n_tokens = self.config.aggregated_tokens + 2
        return 4 * (4 * n_tokens * n_regions + n_words * n_regions + 3 * n_words * n_tokens + 4 * n_regions)

    @property
    def constrained_directions(self) -> tuple[str, ...]:
        if self.config.constraint_attention == "slimmed":
            return ("t2i",)
        return self.config.directions

    @property
    def attention_direction(self) -> str:
        return self.constrained_directions[0]

    @property
    def attention_function(self) -> AttentionFunction:
        """How the constraints recompute attention from query-key logits (CCS over a swapped or another
        image's key set): each query's one-hot best key (the slimming cannot be re-run from logits)."""
        return best_region_attention

    def matched_attention(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
        constrained_words: torch.Tensor | None = None,
    ) -> list[MatchedAttention]:
        """The attention of the matched pairs over their ORIGINAL regions (`config.constraint_attention`).

        "slimmed": word t of caption i picks its best slimmed token k of image i (slimmed for caption i),
        a_tj = M_kj, the token's mixing weight on region j, so the attended content sum_j a_tj p_j is that
        token before normalisation. "patches": one-hot best region of each word (and best word of each
        region when the score has an i2t term) by cosine.
        """
        region_mask, word_mask = region_mask.bool(), word_mask.bool()
        if self.config.constraint_attention == "patches":
            return [
                matched_view(
                    l2_normalize(image_embeds),
                    region_mask,
                    l2_normalize(text_embeds),
                    word_mask,
                    direction,
                    best_region_attention,
                    constrained_words,
                )
                for direction in self.constrained_directions
            ]
        slimmed = self.slim(image_embeds, region_mask, text_embeds, word_mask, paired=True)
        tokens, token_mask, mixing = slimmed.tokens[:, 0], slimmed.token_mask[:, 0], slimmed.mixing[:, 0]
        logits = l2_normalize(text_embeds) @ tokens.transpose(1, 2)  # (batch, words, T)
        choice = best_region_attention(logits, word_mask, token_mask)
        return [
            MatchedAttention(
                queries=text_embeds,
                query_mask=word_mask,
                keys=image_embeds,
                key_mask=region_mask,
                attention=choice @ mixing,
                attention_function=best_region_attention,
                constrained_queries=constrained_words,
            )
        ]
