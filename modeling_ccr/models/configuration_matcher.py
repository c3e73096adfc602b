"""Options shared by every region-word matcher: encoders, base loss, and strict validation."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .losses import BASE_LOSSES

CCS_MODES = ("swap_keys", "swap_query", "swap_image")
ATTENDED_SET_RULES = ("inverse_n", "top_k")

# Keys transformers itself passes to a config's constructor (from config.json or from_pretrained);
# anything else that is not a declared field is a typo or a stale option and is rejected.
_TRANSFORMERS_KWARGS = frozenset(
    {
        "auto_map",
        "custom_pipelines",
        "model_type",
        "name_or_path",
        "torch_dtype",
        "output_attentions",
        "attn_implementation",
        "experts_implementation",
        "_commit_hash",
        "_attn_implementation_internal",
        "_experts_implementation_internal",
        "use_cache",
    }
)


def reject_unknown_options(config: PreTrainedConfig, kwargs: dict) -> None:
    """Raise on constructor keywords that are neither declared fields nor transformers' own keys."""
    unknown = sorted(set(kwargs) - _TRANSFORMERS_KWARGS)
    if unknown:
        known = sorted(set(config.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__))
        raise ValueError(f"unknown {type(config).__name__} option(s) {unknown}; valid options are {known}")


def check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"config field {name!r} must be one of {list(choices)}, got {value!r}")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"config field {name!r} must be {bound}, got {value!r}")


@strict
class MatcherConfig(PreTrainedConfig):
    """Encoders and base loss of a matcher (docs/spec.md section 1). Backbone configs subclass this.

    feature_dim: size of one region feature vector (2048 for bottom-up-attention features).
    embed_dim: joint embedding size D of regions and words.
    vocab_size / word_dim: word embedding table; vocab_size comes from the tokenizer.
    num_gru_layers / bidirectional_gru: the text GRU (bidirectional output = mean of both directions).
    text_encoder_name: "gru" (the word GRU above) or the transformers encoder the model was made from (Hub id
        or folder, recorded for reference: the encoder is rebuilt from `text_encoder_config`, no download).
        Run configs call it `text_encoder`; the config cannot, as transformers reads a `text_encoder`
        attribute as a sub-config.
    text_encoder_config: that encoder's config as a dict (with its `model_type`); None for "gru".
    freeze_text_encoder: keep a transformers encoder fixed (no gradient, no dropout); the projection trains.
    text_encoder_learning_rate: the encoder's own learning rate (a separate optimiser param group);
        None uses the run's learning rate.
    normalize_regions / normalize_words: l2-normalise each region / word embedding.
    loss: the base loss: "hinge" (VSE++ triplet), "infonce" or "unified" (docs/losses.md).
    margin / max_violation: hinge margin (also the unified loss's margin); hinge on the hardest in-batch
        negative (True) or summed over negatives.
    temperature: softmax temperature of the "infonce" and "unified" losses.
    hard_negatives: negatives per anchor inside the unified loss, hardest first (0 = all).
    pad/bos/eos_token_id: ids of `<pad>`, `<start>`, `<end>` in the word tokenizer.
    ccr_weight / ccr_margin: weight and margin gamma_r of Contrastive Content Re-sourcing (0 = off).
    ccs_weight / ccs_margin / ccs_mode: Contrastive Content Swapping: "swap_keys" (default), "swap_query"
        or "swap_image".
    constraint_attended_set / constraint_top_k: which keys CCS swaps out: a >= 1/n ("inverse_n") or
        the top-k weights.
    constraint_skip_token_ids: token ids never used as constraint queries (e.g. function words and
        <start>/<end>, for "content words only"); None constrains every word.
    """

    model_type = "xmatch_matcher"
    # Backbones without cross-attention (global embeddings) set this False: no attention, no constraints.
    has_cross_attention = True

    feature_dim: int = 2048
    embed_dim: int = 1024
    vocab_size: int = 10000
    word_dim: int = 300
    num_gru_layers: int = 1
    bidirectional_gru: bool = True
    text_encoder_name: str = "gru"
    text_encoder_config: dict | None = None
    freeze_text_encoder: bool = False
    text_encoder_learning_rate: float | None = None
    normalize_regions: bool = True
    normalize_words: bool = True
    loss: str = "hinge"
    margin: float = 0.2
    max_violation: bool = True
    temperature: float = 0.05
    hard_negatives: int = 0
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    # Contrastive attention constraints (docs/spec.md section 3, our formulation; docs/constraints.md).
    ccr_weight: float = 0.0
    ccr_margin: float = 0.2
    ccs_weight: float = 0.0
    ccs_margin: float = 0.2
    ccs_mode: str = "swap_keys"
    constraint_attended_set: str = "inverse_n"
    constraint_top_k: int = 3
    constraint_skip_token_ids: list[int] | None = None

    def __post_init__(self, **kwargs):
        reject_unknown_options(self, kwargs)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        for name in ("feature_dim", "embed_dim", "vocab_size", "word_dim", "num_gru_layers"):
            check_positive(name, getattr(self, name))
        self.validate_text_encoder()
        check_choice("loss", self.loss, BASE_LOSSES)
        check_positive("margin", self.margin, allow_zero=True)
        check_positive("temperature", self.temperature)
        check_positive("hard_negatives", self.hard_negatives, allow_zero=True)
        for name in ("ccr_weight", "ccr_margin", "ccs_weight", "ccs_margin"):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_choice("ccs_mode", self.ccs_mode, CCS_MODES)
        check_choice("constraint_attended_set", self.constraint_attended_set, ATTENDED_SET_RULES)
        check_positive("constraint_top_k", self.constraint_top_k)
        if self.uses_constraints and not self.has_cross_attention:
            raise ValueError(
                f"{type(self).__name__} has no cross-attention for CCR/CCS to constrain: "
                f"set ccr_weight and ccs_weight to 0 (got {self.ccr_weight} and {self.ccs_weight})"
            )

    def validate_text_encoder(self) -> None:
        if self.uses_gru:
            if self.text_encoder_config is not None:
                raise ValueError(
                    "config field 'text_encoder_config' is only for a transformers text_encoder, not 'gru'"
                )
        elif not isinstance(self.text_encoder_config, dict) or "model_type" not in self.text_encoder_config:
            raise ValueError(
                f"text_encoder_name {self.text_encoder_name!r} needs 'text_encoder_config', the encoder's config dict with "
                f"its model_type (found {type(self.text_encoder_config).__name__})"
            )
        if self.text_encoder_learning_rate is not None:
            check_positive("text_encoder_learning_rate", self.text_encoder_learning_rate)

    @property
    def uses_gru(self) -> bool:
        return self.text_encoder_name == "gru"

    @property
    def uses_constraints(self) -> bool:
        return self.ccr_weight > 0 or self.ccs_weight > 0
