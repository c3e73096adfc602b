"""Region and word encoders shared by every matcher (SPEC section 1)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# SCAN's epsilon: added to norms so an all-zero (padded) vector stays zero instead of NaN.
NORM_EPS = 1e-8


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / (x.norm(dim=dim, keepdim=True) + NORM_EPS)


class RegionEncoder(nn.Module):
    """Linear projection of precomputed region features, optionally l2-normalised.

    Input `(batch, n_regions, feature_dim)` and mask `(batch, n_regions)` bool; output
    `(batch, n_regions, embed_dim)`, zero at padded regions.
    """

    def __init__(self, feature_dim: int, embed_dim: int, normalize: bool):
        super().__init__()
        self.projection = nn.Linear(feature_dim, embed_dim)
        self.normalize = normalize

    def reset_parameters(self) -> None:
        # SCAN's Xavier-uniform bound sqrt(6 / (fan_in + fan_out)), zero bias.
        nn.init.xavier_uniform_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def forward(self, region_features: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
        regions = self.projection(region_features)
        if self.normalize:
            regions = l2_normalize(regions)
        return regions * region_mask.unsqueeze(-1).to(regions.dtype)


class GRUTextEncoder(nn.Module):
    """Word embeddings then a GRU; a bidirectional GRU's output is the mean of its two directions.

    Input ids and attention mask `(batch, n_tokens)`; output `(batch, n_tokens, embed_dim)`, zero at
    padded tokens. Sequences are packed so padding never reaches the backward direction.
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int,
        embed_dim: int,
        num_layers: int,
        bidirectional: bool,
        normalize: bool,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.word_embeddings = nn.Embedding(vocab_size, word_dim)
        self.gru = nn.GRU(word_dim, embed_dim, num_layers, batch_first=True, bidirectional=bidirectional)
        self.bidirectional = bidirectional
        self.normalize = normalize

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.word_embeddings.weight, -0.1, 0.1)
        # PyTorch's own GRU default, written out because transformers' init does not cover nn.GRU.
        bound = 1.0 / math.sqrt(self.embed_dim)
        for weight in self.gru.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError(
                "every caption needs at least one token; got an all-padding row in attention_mask"
            )
        packed = pack_padded_sequence(
            self.word_embeddings(input_ids), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        words, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=input_ids.shape[1])
        if self.bidirectional:
            words = (words[..., : self.embed_dim] + words[..., self.embed_dim :]) / 2
        if self.normalize:
            words = l2_normalize(words)
        return words * attention_mask.unsqueeze(-1).to(words.dtype)
