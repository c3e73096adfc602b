"""Global pooling heads: VSE-infinity's Generalized Pooling Operator (Chen et al., CVPR 2021; docs/spec.md).

GPO turns a variable-size set of item embeddings (regions, grid cells, patches or words) into one vector.
Each feature dimension is sorted over the set, largest first, and the sorted values are summed with
weights that depend only on their rank and on the size of the set:

    pooled_d = sum_k theta_k(n) * sort_desc(x_{., d})_k,    theta(n) = softmax_k(w^T h_k(n) / tau),

h_k(n) the mean of the two directions of a small bidirectional GRU run over sinusoidal encodings of the
positions 0..n-1 of a set of n items, w a learned vector and tau = 0.1. Max pooling (theta = one-hot at
rank 0), mean pooling (theta = 1/n) and K-max pooling are special cases the GRU can learn.

Checkpoint code: sibling imports only (any matcher can carry this head; `models/__init__.py` explains why).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import initialization as init

# VSE-infinity's settings: 32-dim positional encodings, a 32-unit GRU, softmax temperature 0.1.
GPO_POSITION_DIM = 32
GPO_HIDDEN_DIM = 32
GPO_TEMPERATURE = 0.1


def sinusoidal_positions(
    n_positions: int, dim: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Transformer sinusoidal encodings of positions 0..n_positions-1: `(n_positions, dim)`.

    pe[p, 2i] = sin(p / 10000^(2i / dim)), pe[p, 2i + 1] = cos(p / 10000^(2i / dim)); dim must be even.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal positional encodings need an even dimension, got {dim}")
    positions = torch.arange(n_positions, dtype=dtype, device=device).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=dtype, device=device) * (-math.log(10000.0) / dim))
    encodings = torch.empty(n_positions, dim, dtype=dtype, device=device)
    encodings[:, 0::2] = torch.sin(positions * frequencies)
    encodings[:, 1::2] = torch.cos(positions * frequencies)
    return encodings


class RankScores(nn.Module):
    """The learned vector w of GPO: `(..., hidden_dim)` -> `(..., 1)`, i.e. a bias-free linear map.

    Not an `nn.Linear` on purpose: GPO is a head any matcher can carry, and a backbone whose
    `_init_weights` re-initialises every `nn.Linear` with a bias (SGRAF's Xavier and zero bias) must leave
    it alone. Its parameter is `weight` `(1, hidden_dim)`, as `nn.Linear`'s, so checkpoints are unchanged.
    """

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, hidden_dim))
        # nn.Linear's own construction-time init: the same random draws as before this class existed.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(states, self.weight)


class GeneralizedPooling(nn.Module):
    """VSE-infinity's Generalized Pooling Operator: a learned, size-aware weighting of sorted features.

    position_dim: size of the sinusoidal position encodings (even); hidden_dim: units of the
    bidirectional GRU that reads them; temperature: of the softmax over ranks.
    Input items `(batch, n, D)` and mask `(batch, n)` bool (True for real items; padding may sit
    anywhere, e.g. a dropped region in the middle); output `(batch, D)`, not normalised. Every row needs
    at least one real item. Padded items never reach the sort, the GRU or the sum.
    """

    def __init__(
        self,
        position_dim: int = GPO_POSITION_DIM,
        hidden_dim: int = GPO_HIDDEN_DIM,
        temperature: float = GPO_TEMPERATURE,
    ):
        super().__init__()
        self.position_dim = position_dim
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.gru = nn.GRU(position_dim, hidden_dim, 1, batch_first=True, bidirectional=True)
        self.linear = RankScores(hidden_dim)

    def reset_parameters(self) -> None:
        # PyTorch's defaults (what VSE-infinity trains from), through transformers' init so that weights
        # loaded from a checkpoint are never overwritten.
        bound = 1.0 / math.sqrt(self.hidden_dim)
        for weight in self.gru.parameters():
            init.uniform_(weight, -bound, bound)
        init.uniform_(self.linear.weight, -bound, bound)

    def pool_weights(self, counts: torch.Tensor, n_positions: int) -> torch.Tensor:
        """Weights theta over ranks for sets of `counts` `(batch,)` items: `(batch, n_positions)`, each row a
        softmax over its first count ranks and exactly zero beyond them.

        The weights depend only on a set's size, so the GRU runs once per distinct size in the batch.
        """
        if bool((counts < 1).any()):
            raise ValueError("GPO needs at least one item per row; got an all-padding row in the mask")
        sizes, which = torch.unique(counts, return_inverse=True)
        dtype = self.linear.weight.dtype
        longest = int(sizes.max())
        positions = sinusoidal_positions(longest, self.position_dim, dtype, counts.device)
        packed = pack_padded_sequence(
            positions.expand(len(sizes), -1, -1), sizes.cpu(), batch_first=True, enforce_sorted=False
        )
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=n_positions)
        states = (states[..., : self.hidden_dim] + states[..., self.hidden_dim :]) / 2
        logits = self.linear(states).squeeze(-1)  # (n_sizes, n_positions)
        ranks = torch.arange(n_positions, device=counts.device)
        beyond = ranks[None, :] >= sizes[:, None]
        weights = torch.softmax(logits.masked_fill(beyond, float("-inf")) / self.temperature, dim=-1)
        return weights[which]

    def sorted_items(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each feature dimension of the real items sorted over the set, largest first, zero beyond the
        set's size: `(batch, n, D)`."""
        counts = mask.sum(dim=1)
        ordered = items.masked_fill(~mask.unsqueeze(-1), float("-inf")).sort(dim=1, descending=True).values
        beyond = torch.arange(items.shape[1], device=items.device)[None, :] >= counts[:, None]
        return ordered.masked_fill(beyond.unsqueeze(-1), 0.0)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        weights = self.pool_weights(mask.sum(dim=1), items.shape[1]).to(items.dtype)
        return (self.sorted_items(items, mask) * weights.unsqueeze(-1)).sum(dim=1)
