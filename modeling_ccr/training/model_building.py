"""A new model from a run config: the tokenizer of its data, and the backbone sized for tokenizer and data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..data.corpora import DataConfig
from ..data.pairs import caption_table
from ..data.streaming import StreamingImageCaptionPairs
from ..errors import ConfigError
from ..models import BACKBONES
from ..models.configuration_ensemble import member_entry
from ..text.tokenization import FUNCTION_WORDS, build_word_tokenizer, scan_word_tokenizer
from .run_config import ENSEMBLE, ModelSection
from .text_encoders import load_text_encoder_weights, text_encoder_options


def run_tokenizer(
    data: DataConfig, train_split: datasets.Dataset | StreamingImageCaptionPairs | None
) -> PreTrainedTokenizerBase:
    """SCAN's vocabulary file when `data.vocab` names one, else a vocabulary of the training captions."""
    if data.vocab is not None:
        return scan_word_tokenizer(data.vocab)
    streamed = isinstance(train_split, StreamingImageCaptionPairs)
    captions = train_split.captions if streamed else caption_table(train_split)[0]
    return build_word_tokenizer(captions, data.min_word_count)


def feature_dim_of(split: datasets.Dataset | StreamingImageCaptionPairs) -> int:
    """The region-feature size of a split (its first row's `features`: (n_regions, feature_dim))."""
    if isinstance(split, StreamingImageCaptionPairs):
        return split.feature_dim
    return int(split.with_format("numpy", columns=["features"])[0]["features"].shape[-1])


# A model section as read (ModelSection) or as written in YAML (a mapping).
SectionLike = ModelSection | Mapping[str, Any]


def _section(model_section: SectionLike, where: str) -> ModelSection:
    """A model section as written in YAML (a mapping) or already read."""
    if isinstance(model_section, ModelSection):
        return model_section
    return ModelSection.from_mapping(model_section, where)


def build_model(
    model_section: SectionLike, tokenizer: PreTrainedTokenizerBase, feature_dim: int, where: str
) -> PreTrainedModel:
    """The backbone named by the model section, sized for the tokenizer and the data's features."""
    section = _section(model_section, where)
    model_class = BACKBONES[section.backbone][1]
    model = model_class(build_config(section, tokenizer, feature_dim, where))
    return load_text_encoder_weights(model, section.to_dict())


def build_config(
    model_section: SectionLike, tokenizer: PreTrainedTokenizerBase, feature_dim: int, where: str
) -> PreTrainedConfig:
    """The model config of a model section; an ensemble's members are model sections themselves."""
    section = _section(model_section, where)
    if section.backbone == ENSEMBLE:
        entries = [
            member_entry(build_config(member, tokenizer, feature_dim, f"{where} model.members[{index}]"))
            for index, member in enumerate(section.members)
        ]
        options: dict[str, Any] = {"members": entries}
    else:
        options = dict(section.options)
        skip_words = options.pop("constraint_skip_words", None)
        options.update(member_options(options, tokenizer, feature_dim, where))
        options = text_encoder_options(options, where)
        if skip_words is not None:
            options["constraint_skip_token_ids"] = skip_token_ids(tokenizer, skip_words)
    try:
        return BACKBONES[section.backbone][0](**options)
    except Exception as err:
        raise ConfigError(f"{where}: invalid model section: {err}") from err


def member_options(
    options: dict[str, Any], tokenizer: PreTrainedTokenizerBase, feature_dim: int, where: str
) -> dict[str, Any]:
    """A single backbone's options that come from the tokenizer and the data, not from the YAML."""
    if options.get("feature_dim", feature_dim) != feature_dim:
        raise ConfigError(
            f"{where}: model.feature_dim={options['feature_dim']} but the dataset's features have {feature_dim}"
        )
    return {
        "feature_dim": feature_dim,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def skip_token_ids(tokenizer: PreTrainedTokenizerBase, words: str | list[str]) -> list[int]:
    """Token ids the constraints skip: `<start>`, `<end>` and the given words ("function_words" = FUNCTION_WORDS)."""
    words = list(FUNCTION_WORDS) if words == "function_words" else list(words)
    # The word tokenizer's <start>/<end>; a sub-word tokenizer's [CLS]/[SEP] (its bos/eos may be None).
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id}
    ids.discard(None)
    ids.update(i for i in tokenizer.convert_tokens_to_ids(words) if i != tokenizer.unk_token_id)
    return sorted(ids)
