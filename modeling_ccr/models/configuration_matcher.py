"""Options shared by every region-word matcher: encoders, base loss, and strict validation."""

from __future__ import annotations

import contextlib
import math
import sys
import types
import typing

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .constraints import CCS_MODES
from .global_head import head_settings
from .losses import BASE_LOSSES

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


# The `vision_tower` sub-config (models/vision_tower.py): every key with its default. A tower is named by
# its timm architecture; everything else has a default, and the stored dict always holds every key.
VISION_TOWER_DEFAULTS: dict[str, object] = {
    "architecture": None,  # a timm model name, e.g. "efficientnet_lite0" (required)
    "image_size": None,  # input side (int) or [height, width]; None: the architecture's pretrained size
    "regions": "grid",  # "grid": feature-map cells; "boxes": RoIAlign over boxes given with the image
    "grid": None,  # "grid" regions pooled to grid x grid cells; None: every cell of the map
    "feature_level": -1,  # -1: the model's final features; k >= 0: the output of feature stage k
    "weights": None,  # local state-dict file for a NEW model's first weights (None: packaged, if any)
    "freeze_steps": 0,  # training steps with the tower frozen (no gradient, eval mode)
    "learning_rate": None,  # the tower's own learning rate (optimiser param group); None: the run's
    "freeze_batchnorm": False,  # keep BatchNorm running statistics fixed while the tower trains
    "gradient_checkpointing": False,  # recompute the tower's activations in backward (memory for time)
    # A transformer tower's tokens as a transformers ViTModel's last_hidden_state has them (what LAPS aligns):
    "final_norm": False,  # its patch tokens after its final norm (False: its last block's output)
    "class_token": False,  # its [CLS] token first, as region 0 (box: the whole image); "grid" regions only
    "layer_norm_eps": None,  # eps of every LayerNorm in the tower (None: timm's; transformers' ViT: 1e-12)
    "image_mean": None,  # [r, g, b] the processor normalises with (None: the architecture's pretrained mean)
    "image_std": None,  # [r, g, b] (None: the architecture's pretrained std)
}
VISION_TOWER_REGIONS = ("grid", "boxes")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """An int or float, not a bool, not NaN or infinite: what a numeric config value may be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_vision_tower(spec: object) -> dict[str, object] | None:
    """The `vision_tower` sub-config with every key (defaults filled in), or a one-line ValueError naming
    the key, what it must be and what was found."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ValueError(f"config field 'vision_tower' must be a mapping, found {type(spec).__name__}")
    unknown = sorted(set(spec) - set(VISION_TOWER_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown vision_tower option(s) {unknown}; valid options are {sorted(VISION_TOWER_DEFAULTS)}"
        )
    spec = {**VISION_TOWER_DEFAULTS, **spec}

    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"config field 'vision_tower.{key}' must be {expected}, found {spec[key]!r}")

    if not isinstance(spec["architecture"], str) or not spec["architecture"].strip():
        raise bad("architecture", "a timm model name (e.g. 'efficientnet_lite0')")
    size = spec["image_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or not all(_is_int(v) and v >= 8 for v in size):
            raise bad("image_size", "an int >= 8 or [height, width]")
        spec["image_size"] = [int(v) for v in size]
    elif size is not None and not (_is_int(size) and size >= 8):
        raise bad("image_size", "an int >= 8 or [height, width]")
    check_choice("vision_tower.regions", spec["regions"], VISION_TOWER_REGIONS)
    if spec["grid"] is not None and not (_is_int(spec["grid"]) and spec["grid"] >= 1):
        raise bad("grid", "a positive int or null (every cell)")
    if not _is_int(spec["feature_level"]) or spec["feature_level"] < -1:
        raise bad("feature_level", "-1 (final features) or a stage index >= 0")
    if spec["weights"] is not None and not isinstance(spec["weights"], str):
        raise bad("weights", "a path to a local state-dict file, or null")
    if not _is_int(spec["freeze_steps"]) or spec["freeze_steps"] < 0:
        raise bad("freeze_steps", "an int >= 0")
    rate = spec["learning_rate"]
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
        raise bad("learning_rate", "a number > 0, or null (the run's learning rate)")
    for key in ("freeze_batchnorm", "gradient_checkpointing", "final_norm", "class_token"):
        if not isinstance(spec[key], bool):
            raise bad(key, "true or false")
    if spec["class_token"] and spec["regions"] != "grid":
        raise bad("class_token", "false with regions 'boxes' (the [CLS] token is added to a grid's cells)")
    eps = spec["layer_norm_eps"]
    if eps is not None and not (is_finite_number(eps) and 0 < eps < 1):
        raise bad("layer_norm_eps", "a number in (0, 1), or null (timm's own)")
    for key in ("image_mean", "image_std"):
        values = spec[key]
        if values is None:
            continue
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 3
            or not all(map(is_finite_number, values))
        ):
            raise bad(key, "three numbers [r, g, b], or null (the architecture's pretrained values)")
        if key == "image_std" and not all(v > 0 for v in values):
            raise bad(key, "three numbers > 0")
        spec[key] = [float(v) for v in values]
    return spec


def validate_global_head(spec: object, embed_dim: object) -> dict[str, object] | None:
    """The `global_head` sub-config with every setting (`global_head.DEFAULTS` filled in, `embed_dim` the
    matcher's own), or a one-line ValueError naming the setting, what it must be and what was found."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ValueError(f"config field 'global_head' must be a mapping, found {type(spec).__name__}")
    given = spec.get("embed_dim", embed_dim)
    if given != embed_dim:
        # The head reads the matcher's fragments, so its input width is the matcher's embed_dim.
        raise ValueError(
            f"config field 'global_head.embed_dim' must equal embed_dim ({embed_dim!r}) or be left out, "
            f"found {given!r}"
        )
    return head_settings({**spec, "embed_dim": embed_dim})


def _accepts(annotation: object, value: object) -> bool:
    """Whether `value` fits a field annotation of the simple kinds configs use (int, float, bool, str,
    list, dict, and `X | None`); other annotations are left to their own validation."""
    if annotation is typing.Any:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation) or annotation
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:
        return _is_int(value)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (str, list, dict):
        return isinstance(value, origin)
    return True


def check_field_types(config: PreTrainedConfig) -> None:
    """A one-line ValueError naming the first field whose value has the wrong type (e.g. a non-numeric
    `embed_dim` in a hand-edited config.json), before any validator compares it with a number."""
    hints: dict[str, tuple[object, str]] = {}
    for klass in reversed(type(config).__mro__[: type(config).__mro__.index(PreTrainedConfig)]):
        namespace = vars(sys.modules[klass.__module__])
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            with contextlib.suppress(Exception):  # only our fields' simple annotations are checked
                evaluated = eval(annotation, namespace) if isinstance(annotation, str) else annotation
                hints[name] = (evaluated, annotation if isinstance(annotation, str) else str(annotation))
    for name in config.__dataclass_fields__:
        if name in PreTrainedConfig.__dataclass_fields__ or name not in hints:
            continue
        value = getattr(config, name)
        annotation, expected = hints[name]
        if not _accepts(annotation, value):
            raise ValueError(
                f"config field {name!r} of {type(config).__name__} must be {expected}, found {value!r} "
                f"({type(value).__name__})"
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
    ccs_weight / ccs_margin / ccs_mode: Contrastive Content Swapping: "swap_keys" (default), "swap_query",
        "swap_image" or "swap_within" (ours, docs/constraints.md).
    constraint_attended_set / constraint_top_k: which keys CCS swaps out: a >= 1/n ("inverse_n") or
        the top-k weights.
    constraint_skip_token_ids: token ids never used as constraint queries (e.g. function words and
        <start>/<end>, for "content words only"); None constrains every word.
    vision_tower: a timm backbone inside the model that turns `pixel_values` into region features
        (`VISION_TOWER_DEFAULTS` lists its keys; models/vision_tower.py); None reads precomputed region
        features. With a tower, `feature_dim` is the tower's feature size (set when the model is built).
    global_head: a global head trained with the matcher (models/global_head.py: "pooling" "mean" or "gpo",
        "global_dim", "temperature", "contrastive_weight", "distill_weight", "distill_temperature";
        `embed_dim` is the matcher's), whose embeddings are the first stage of two-stage retrieval
        (`ccr evaluate --rerank-k`); None: no head. Stored with every setting filled in.
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
    vision_tower: dict | None = None
    global_head: dict | None = None

    def __post_init__(self, **kwargs):
        reject_unknown_options(self, kwargs)
        # Checked here, not in validate_architecture, so the error stays one line (validators' errors are
        # wrapped in a multi-line StrictDataclassClassValidationError).
        check_field_types(self)
        self.vision_tower = validate_vision_tower(self.vision_tower)
        self.global_head = validate_global_head(self.global_head, self.embed_dim)
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
    def uses_vision_tower(self) -> bool:
        return self.vision_tower is not None

    @property
    def uses_gru(self) -> bool:
        return self.text_encoder_name == "gru"

    @property
    def uses_global_head(self) -> bool:
        return self.global_head is not None

    @property
    def uses_constraints(self) -> bool:
        return self.ccr_weight > 0 or self.ccs_weight > 0
