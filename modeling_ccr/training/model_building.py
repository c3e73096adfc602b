"""A new model from a run config: the tokenizer of its data, and the backbone sized for tokenizer and data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..data.corpora import DataConfig
from ..data.image_corpus import corpus_captions, split_feature_dim
from ..data.schema import is_image_corpus
from ..data.streaming import StreamingImageCaptionPairs
from ..errors import ConfigError
from ..models import BACKBONES
from ..models.configuration_ensemble import member_entry
from ..text.tokenization import FUNCTION_WORDS, build_word_tokenizer, scan_word_tokenizer
from .run_config import ENSEMBLE, ModelSection, config_class_options
from .text_encoders import load_text_encoder_weights, text_encoder_options


def run_tokenizer(
    data: DataConfig, train_split: datasets.Dataset | StreamingImageCaptionPairs | None
) -> PreTrainedTokenizerBase:
    """SCAN's vocabulary file when `data.vocab` names one, else a vocabulary of the training captions
    (of a region-feature or an image corpus)."""
    if data.vocab is not None:
        return scan_word_tokenizer(data.vocab)
    streamed = isinstance(train_split, StreamingImageCaptionPairs)
    captions = train_split.captions if streamed else corpus_captions(train_split)
    return build_word_tokenizer(captions, data.min_word_count)


def feature_dim_of(
    split: datasets.Dataset | StreamingImageCaptionPairs,
    model_section: SectionLike | None = None,
    where: str = "run",
) -> int:
    """The region-feature size a model trained on `split` sees: its stored `features` `(n_regions,
    feature_dim)`, or for an image corpus the size of the model section's `vision_tower`."""
    if isinstance(split, StreamingImageCaptionPairs):
        return split.feature_dim
    options = {} if model_section is None else dict(_section(model_section, where).options)
    _refuse_tower_ensemble(split, model_section, where)
    try:
        return split_feature_dim(split, options)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def region_count_of(
    split: datasets.Dataset | StreamingImageCaptionPairs, model_section: SectionLike, where: str = "run"
) -> int | None:
    """Regions per image of an image corpus seen through the section's tower (grid cells, or the most
    boxes an image of the split has); None for region features, whose count the YAML states."""
    if isinstance(split, StreamingImageCaptionPairs) or not is_image_corpus(split):
        return None
    from ..models.vision_tower import tower_region_count

    tower = _section(model_section, where).options.get("vision_tower")
    if tower is None:
        return None
    count = tower_region_count(tower)
    if count is None and "boxes" in split.column_names:
        lengths = split.with_format("arrow", columns=["boxes"])[:].column("boxes")
        count = max((len(boxes) for boxes in lengths.to_pylist() if boxes is not None), default=0)
    return count or None


def _refuse_tower_ensemble(split: datasets.Dataset, model_section: SectionLike | None, where: str) -> None:
    if (
        model_section is not None
        and is_image_corpus(split)
        and _section(model_section, where).backbone == ENSEMBLE
    ):
        raise ConfigError(
            f"{where}: an ensemble cannot train on an image corpus: train each member with its own "
            "vision_tower, then evaluate the trained folders together (ccr evaluate A B)"
        )


# A model section as read (ModelSection) or as written in YAML (a mapping).
SectionLike = ModelSection | Mapping[str, Any]


def _section(model_section: SectionLike, where: str) -> ModelSection:
    """A model section as written in YAML (a mapping) or already read."""
    if isinstance(model_section, ModelSection):
        return model_section
    return ModelSection.from_mapping(model_section, where)


def build_model(
    model_section: SectionLike,
    tokenizer: PreTrainedTokenizerBase,
    feature_dim: int,
    where: str,
    n_regions: int | None = None,
) -> PreTrainedModel:
    """The backbone named by the model section, sized for the tokenizer and the data's features.

    n_regions: regions per image of the data (`region_count_of`), for a backbone with a fixed region
    count (SGR, SAF) whose section does not state it.
    """
    section = _section(model_section, where)
    model_class = BACKBONES[section.backbone][1]
    model = model_class(build_config(section, tokenizer, feature_dim, where, n_regions))
    return load_text_encoder_weights(model, section.to_dict())


def build_config(
    model_section: SectionLike,
    tokenizer: PreTrainedTokenizerBase,
    feature_dim: int,
    where: str,
    n_regions: int | None = None,
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
        fixed_count = "n_regions" in config_class_options(BACKBONES[section.backbone][0])
        if n_regions is not None and fixed_count:
            stated = options.setdefault("n_regions", n_regions)
            if stated != n_regions:
                raise ConfigError(
                    f"{where}: model.n_regions={stated} but the images give {n_regions} regions each "
                    "through the vision tower (leave n_regions out to take it from the tower)"
                )
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
