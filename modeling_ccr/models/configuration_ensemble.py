"""An ensemble of matchers saved as one checkpoint: configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .backbones import SINGLE_BACKBONES
from .configuration_matcher import MatcherConfig, reject_unknown_options

# Members read the same inputs, so they must agree on the features and on the tokenizer.
SHARED_MEMBER_FIELDS = ("feature_dim", "vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")


def member_config_class(model_type: str) -> type[MatcherConfig]:
    by_type = {config_class.model_type: config_class for config_class, _ in SINGLE_BACKBONES.values()}
    if model_type not in by_type:
        raise ValueError(f"ensemble member model_type {model_type!r} is not one of {sorted(by_type)}")
    return by_type[model_type]


def member_entry(config: MatcherConfig) -> dict:
    """A member's entry in `EnsembleConfig.members`: its model_type and its own declared options."""
    own_fields = set(config.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
    return {"model_type": config.model_type, **{name: getattr(config, name) for name in sorted(own_fields)}}


@strict
class EnsembleConfig(PreTrainedConfig):
    """Member models whose similarity matrices are averaged (e.g. SCAN t2i-AVG + i2t-LSE, SGR + SAF).

    members: each member's options as a dict with its `model_type` (see `member_entry`); all members
        share the feature size and the tokenizer (SHARED_MEMBER_FIELDS).
    pad/bos/eos_token_id: the shared tokenizer's special tokens (transformers' Trainer writes them into
        the config); when set, they must equal the members' own.
    """

    model_type = "xmatch_ensemble"

    members: list[dict] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        reject_unknown_options(self, kwargs)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if not self.members:
            raise ValueError("config field 'members' must list at least one member config")
        configs = self.member_configs
        for name in SHARED_MEMBER_FIELDS:
            values = [getattr(config, name) for config in configs]
            if len(set(values)) > 1:
                raise ValueError(f"ensemble members disagree on {name!r}: {values}")
            own = getattr(self, name, None)
            if own is not None and own != values[0]:
                raise ValueError(f"ensemble {name}={own!r} differs from its members' {values[0]!r}")

    @property
    def member_configs(self) -> list[MatcherConfig]:
        """The members' config objects, in order."""
        configs = []
        for index, member in enumerate(self.members):
            if not isinstance(member, dict) or "model_type" not in member:
                raise ValueError(f"ensemble member {index} must be a config dict with a 'model_type'")
            config_class = member_config_class(member["model_type"])
            options = {k: v for k, v in member.items() if k != "model_type"}
            try:
                configs.append(config_class(**options))
            except Exception as err:
                raise ValueError(f"ensemble member {index} ({member['model_type']}): {err}") from err
        return configs

    @property
    def has_cross_attention(self) -> bool:
        return any(config.has_cross_attention for config in self.member_configs)
