"""SGRAF: Similarity Graph Reasoning and Attention Filtration (Diao et al., AAAI 2021; docs/spec.md section 2).

SGR and SAF share everything up to a set of similarity vectors per image-caption pair: the global
vector s_g (from self-attention pooling of each side) and one local vector s_t per word (from t2i
SCAN attention). They differ only in how those nodes become one vector before the score head:
graph reasoning (`SgrModel`) or attention filtration (`SafModel`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_sgraf import SafConfig, SgrafConfig, SgrConfig
from .constraints import AttentionFunction
from .cross_attention import scan_attention_function
from .encoders import NORM_EPS, l2_normalize
from .modeling_matcher import MatcherPreTrainedModel


def masked_mean(items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the valid items: `(batch, n, D)`, mask `(batch, n)` bool -> `(batch, D)`."""
    weights = mask.unsqueeze(-1).to(items.dtype)
    return (items * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)


def masked_batch_norm(batch_norm: nn.BatchNorm1d, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`batch_norm` on values `(batch, channels, length)` whose statistics see only the valid entries.

    mask: bool, broadcastable to values. In training mode each channel is normalised with the mean and
    (biased) variance of its valid entries, which also update the running statistics as
    `nn.BatchNorm1d` would; in eval mode the running statistics are used. Invalid entries come out zero.
    With nothing masked this equals `batch_norm(values)`.
    """
    weights = mask.expand_as(values).to(values.dtype)
    if batch_norm.training or batch_norm.running_mean is None:
        count = weights.sum(dim=(0, 2))
        mean = (values * weights).sum(dim=(0, 2)) / count.clamp_min(1)
        var = ((values - mean[:, None]).pow(2) * weights).sum(dim=(0, 2)) / count.clamp_min(1)
        if batch_norm.training:
            _update_running_stats(batch_norm, mean.detach(), var.detach(), count)
    else:
        mean, var = batch_norm.running_mean, batch_norm.running_var
    normalized = (values - mean[:, None]) * torch.rsqrt(var[:, None] + batch_norm.eps)
    if batch_norm.affine:
        normalized = normalized * batch_norm.weight[:, None] + batch_norm.bias[:, None]
    return normalized * weights


@torch.no_grad()
def _update_running_stats(
    batch_norm: nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor
) -> None:
    if not batch_norm.track_running_stats:
        return
    batch_norm.num_batches_tracked += 1
    momentum = batch_norm.momentum
    if momentum is None:  # cumulative moving average, as in nn.BatchNorm1d
        momentum = 1.0 / float(batch_norm.num_batches_tracked)
    # The running variance is unbiased; a channel with fewer than two valid entries has none to give.
    seen = count > 1
    unbiased = var * count / (count - 1).clamp_min(1)
    for running, batch in ((batch_norm.running_mean, mean), (batch_norm.running_var, unbiased)):
        running.copy_(torch.where(seen, torch.lerp(running, batch, momentum), running))


class SgrafSelfAttentionPooling(nn.Module):
    """Gated self-attention pooling of one side's items into a global vector (v_bar or t_bar).

    local = Tanh(Linear(items)), context = Tanh(Linear(mean of items)), each followed by dropout;
    weights = softmax over valid items of Linear(local * context) -> 1; output = l2norm(sum_j w_j item_j).
    n_positions: for regions, batch-normalise `local` over the item axis (one channel per region slot,
    so the number of slots is fixed) and `context` over its features; None (words): no batch norm.
    """

    def __init__(self, embed_dim: int, dropout: float, n_positions: int | None = None):
        super().__init__()
        self.local_projection = nn.Linear(embed_dim, embed_dim)
        self.context_projection = nn.Linear(embed_dim, embed_dim)
        self.local_norm = nn.BatchNorm1d(n_positions) if n_positions is not None else None
        self.context_norm = nn.BatchNorm1d(embed_dim) if n_positions is not None else None
        self.gate = nn.Linear(embed_dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """items `(batch, n, embed_dim)`, mask `(batch, n)` bool -> `(batch, embed_dim)`."""
        local = self.local_projection(items)
        context = self.context_projection(masked_mean(items, mask))
        if self.local_norm is not None:
            local = masked_batch_norm(self.local_norm, local, mask.unsqueeze(-1))
            context = self.context_norm(context)
        local = self.dropout(torch.tanh(local))
        context = self.dropout(torch.tanh(context))
        gate = self.gate(local * context.unsqueeze(1)).squeeze(-1)
        weights = torch.softmax(gate.masked_fill(~mask, float("-inf")), dim=-1)
        return l2_normalize((weights.unsqueeze(-1) * items).sum(dim=1))


class SgrafPreTrainedModel(MatcherPreTrainedModel):
    """What SGR and SAF share: pooling, t2i attention, similarity vectors, score head, constraint view.

    A subclass supplies `aggregate(nodes, node_mask)`: the nodes [s_g, s_1..s_m] of every pair
    `(n_images, n_captions, 1 + n_words, sim_dim)` -> one vector per pair `(n_images, n_captions, sim_dim)`.
    """

    config_class = SgrafConfig

    def __init__(self, config: SgrafConfig):
        super().__init__(config)
        self.region_pooling = SgrafSelfAttentionPooling(config.embed_dim, config.dropout, config.n_regions)
        self.word_pooling = SgrafSelfAttentionPooling(config.embed_dim, config.dropout)
        self.local_similarity = nn.Linear(config.embed_dim, config.sim_dim)
        self.global_similarity = nn.Linear(config.embed_dim, config.sim_dim)
        self.score_head = nn.Linear(config.sim_dim, 1)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if self._in_vision_tower(module):
            return  # a tower keeps timm's initialisation (or its pretrained weights), as in every matcher
        if isinstance(module, nn.Linear):
            # SGRAF's init: uniform(-r, r) with r = sqrt(6 / (fan_in + fan_out)), i.e. Xavier; zero bias.
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    def _in_vision_tower(self, module: nn.Module) -> bool:
        tower = getattr(self, "vision_tower", None)
        if tower is None:
            return False
        if getattr(self, "_tower_module_ids", None) is None:  # once, not a scan of the tower per module
            self._tower_module_ids = frozenset(id(part) for part in tower.modules())
        return id(module) in self._tower_module_ids

    def aggregate(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement aggregate")

    @property
    def attention_function(self) -> AttentionFunction:
        """The t2i SCAN attention function, shared by scoring and by the constraints' recomputation."""
        return scan_attention_function(self.config.lambda_softmax, self.config.attention_norm)

    def score_pairs(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        """sigmoid(w_e . s) of every pair `(n_images, n_captions)`, s the subclass's aggregated vector."""
        nodes, node_mask = self.similarity_nodes(image_embeds, region_mask, text_embeds, word_mask)
        return torch.sigmoid(self.score_head(self.aggregate(nodes, node_mask))).squeeze(-1)

    def similarity_nodes(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nodes [s_g, s_1..s_m] of every pair `(n_images, n_captions, 1 + n_words, sim_dim)` and their
        mask `(1, n_captions, 1 + n_words)` bool (padded words are invalid nodes, set to zero).

        image_embeds `(n_images, n_regions, D)`, region_mask `(n_images, n_regions)`, text_embeds
        `(n_captions, n_words, D)`, word_mask `(n_captions, n_words)`. Memory is
        O(n_images * n_captions * n_words * D): callers block large galleries.
        """
        self._check_region_slots(image_embeds)
        local = self.local_similarities(image_embeds, region_mask, text_embeds, word_mask)
        # Pooling depends on one side only: once per image and once per caption, not per pair.
        images = self.region_pooling(image_embeds, region_mask)
        captions = self.word_pooling(text_embeds, word_mask)
        difference = (images.unsqueeze(1) - captions.unsqueeze(0)).pow(2)
        global_ = l2_normalize(self.global_similarity(difference))
        nodes = torch.cat([global_.unsqueeze(2), local], dim=2)
        return nodes, F.pad(word_mask, (1, 0), value=True).unsqueeze(0)

    def local_similarities(
        self,
        image_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        text_embeds: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        """s_t = l2norm(W_l (c_t - q_t)^2) of every pair and word `(n_images, n_captions, n_words, sim_dim)`,
        c_t the l2-normalised content word t attends to (t2i); zero at padded words."""
        logits = torch.einsum("cmd,ind->icmn", text_embeds, image_embeds)
        attention = self.attention_function(logits, word_mask.unsqueeze(0), region_mask.unsqueeze(1))
        content = l2_normalize(torch.einsum("icmn,ind->icmd", attention, image_embeds))
        local = l2_normalize(self.local_similarity((content - text_embeds.unsqueeze(0)).pow(2)))
        return local * word_mask[None, :, :, None].to(local.dtype)

    def _check_region_slots(self, image_embeds: torch.Tensor) -> None:
        n_slots, expected = image_embeds.shape[1], self.config.n_regions
        if n_slots != expected:
            raise ValueError(
                f"{type(self).__name__} batch-normalises over a fixed number of region slots: config field "
                f"n_regions={expected}, but the images have {n_slots} (set n_regions={n_slots} for this data)"
            )


class SgrReasoningStep(nn.Module):
    """One step of similarity graph reasoning over nodes `(..., n_nodes, sim_dim)`.

    E = softmax over valid q of (W_in s_p) . (W_out s_q); s_p <- ReLU(W_r sum_q E_pq s_q).
    """

    def __init__(self, sim_dim: int):
        super().__init__()
        self.query = nn.Linear(sim_dim, sim_dim)
        self.key = nn.Linear(sim_dim, sim_dim)
        self.update = nn.Linear(sim_dim, sim_dim)

    def forward(
        self, nodes: torch.Tensor, node_mask: torch.Tensor, updated: slice = slice(None)
    ) -> torch.Tensor:
        """nodes `(..., n_nodes, sim_dim)`, node_mask `(..., n_nodes)` bool (broadcastable).

        Returns the new values of the nodes selected by `updated` (all by default), `(..., n_updated, sim_dim)`.
        """
        edges = torch.matmul(self.query(nodes[..., updated, :]), self.key(nodes).transpose(-1, -2))
        edges = torch.softmax(edges.masked_fill(~node_mask.unsqueeze(-2), float("-inf")), dim=-1)
        return torch.relu(self.update(torch.matmul(edges, nodes)))


class SgrModel(SgrafPreTrainedModel):
    """SGR: `config.sgr_steps` steps of graph reasoning over [s_g, s_1..s_m]; the pair's vector is the
    global node after the last step."""

    config_class = SgrConfig

    def __init__(self, config: SgrConfig):
        super().__init__(config)
        self.reasoning = nn.ModuleList(SgrReasoningStep(config.sim_dim) for _ in range(config.sgr_steps))
        self.post_init()

    def aggregate(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        for step in self.reasoning[:-1]:
            nodes = step(nodes, node_mask)
        # Only the global node is read after the last step: updating the others would be wasted work.
        return self.reasoning[-1](nodes, node_mask, updated=slice(0, 1))[..., 0, :]


class SafAttentionFiltration(nn.Module):
    """beta_p = l1norm over valid nodes of sigmoid(BN(w . s_p)); output l2norm(sum_p beta_p s_p).

    The batch norm's statistics come from the valid nodes of every pair only; padded nodes get beta = 0.
    """

    def __init__(self, sim_dim: int):
        super().__init__()
        self.gate = nn.Linear(sim_dim, 1)
        self.norm = nn.BatchNorm1d(1)

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """nodes `(..., n_nodes, sim_dim)`, node_mask `(..., n_nodes)` bool (broadcastable) -> `(..., sim_dim)`."""
        logits = self.gate(nodes).squeeze(-1)
        mask = node_mask.expand_as(logits)
        n_nodes = logits.shape[-1]
        normalized = masked_batch_norm(
            self.norm, logits.reshape(-1, 1, n_nodes), mask.reshape(-1, 1, n_nodes)
        ).view_as(logits)
        beta = torch.sigmoid(normalized) * mask.to(normalized.dtype)
        beta = beta / (beta.sum(dim=-1, keepdim=True) + NORM_EPS)
        return l2_normalize((beta.unsqueeze(-1) * nodes).sum(dim=-2))


class SafModel(SgrafPreTrainedModel):
    """SAF: attention filtration of [s_g, s_1..s_m] into one vector per pair."""

    config_class = SafConfig

    def __init__(self, config: SafConfig):
        super().__init__(config)
        self.filtration = SafAttentionFiltration(config.sim_dim)
        self.post_init()

    def aggregate(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        return self.filtration(nodes, node_mask)
