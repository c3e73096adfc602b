"""Region and word encoders shared by every matcher (docs/spec.md section 1): the word GRU or a pretrained transformer."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoConfig, AutoModel

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


class PretrainedTextEncoder(nn.Module):
    """A transformers text encoder (BERT, MiniLM, ...) whose token states are projected to the joint space.

    Built from the encoder's config dict alone (`transformer_config`, with its `model_type`), so a saved
    matcher rebuilds it without downloading anything; pretrained weights come from
    `load_pretrained_weights` when a model is first made, and from the matcher's own checkpoint after.
    Input ids and attention mask `(batch, n_tokens)`; output `(batch, n_tokens, embed_dim)`, l2-normalised
    when `normalize`, zero at padded tokens. With `freeze`, the encoder gets no gradient and stays in eval
    mode (no dropout), so it is a fixed feature function; the projection still trains.
    """

    def __init__(self, transformer_config: dict, embed_dim: int, normalize: bool, freeze: bool):
        super().__init__()
        options = {k: v for k, v in transformer_config.items() if k != "model_type"}
        self.transformer = AutoModel.from_config(
            AutoConfig.for_model(transformer_config["model_type"], **options)
        )
        self.projection = nn.Linear(self.transformer.config.hidden_size, embed_dim)
        self.normalize = normalize
        self.frozen = freeze
        if freeze:
            self.transformer.requires_grad_(False)

    def reset_parameters(self) -> None:
        # Only the projection is ours; the transformer keeps its own initialisation or pretrained weights.
        nn.init.xavier_uniform_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def load_pretrained_weights(self, name_or_path: str) -> None:
        """Copy the weights of a transformers encoder (local folder or Hub id) into `self.transformer`."""
        pretrained = AutoModel.from_pretrained(name_or_path)
        self.transformer.load_state_dict(pretrained.state_dict())

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        if self.frozen:
            self.transformer.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        words = self.projection(states)
        if self.normalize:
            words = l2_normalize(words)
        return words * attention_mask.unsqueeze(-1).to(words.dtype)


def build_text_encoder(config) -> GRUTextEncoder | PretrainedTextEncoder:
    """The text encoder a `MatcherConfig` asks for: the word GRU, or a transformers encoder rebuilt from
    `config.text_encoder_config` (random weights until loaded; see `PretrainedTextEncoder`)."""
    if config.text_encoder_name == "gru":
        return GRUTextEncoder(
            config.vocab_size,
            config.word_dim,
            config.embed_dim,
            config.num_gru_layers,
            config.bidirectional_gru,
            config.normalize_words,
        )
    return PretrainedTextEncoder(
        config.text_encoder_config, config.embed_dim, config.normalize_words, config.freeze_text_encoder
    )
