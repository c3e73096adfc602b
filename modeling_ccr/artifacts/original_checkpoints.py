"""Checkpoints trained with the original SCAN, BFAN, SGRAF, VSE-infinity, CHAN and LAPS code, converted into
model folders.

The original training scripts (kuanghuei/SCAN, CrossmodalGroup/BFAN, Paranioar/SGRAF, woodfrog/vse_infty,
ppanzx/CHAN) save a pickled dict: `model` (a list of state dicts: image encoder, text encoder and, for
SGRAF, the similarity encoder; CHAN adds its parameter-free similarity encoder and criterion), `opt` (the
`argparse.Namespace` of training options), `epoch`, `best_rsum`, `Eiters`. CrossmodalGroup/LAPS saves
`model` as one state dict (its transformers ViT or Swin, BERT and aggregation MLP), split here into the
same parts; its vision transformer becomes a timm tower computing the same tokens.

1. Reading: `torch.load(weights_only=True)` with `argparse.Namespace` allowed for this one call. Any other
   global in the pickle is refused, naming it, before anything is unpickled (a pickle's globals are how it
   runs code).
2. Options -> config: every option that shapes the model is mapped onto our config or refused with the
   option and its value; sizes are read from the tensors and checked against the options.
3. Weights -> modules: each original key has one place in our modules; every source tensor is used once
   and every target filled, or the error lists what is left over on either side. The few tensors the
   original code creates but never reads in its forward pass are dropped by name, with a note. A NaN or
   infinite weight is refused, naming the tensor.
4. Output: an ordinary model folder (safetensors, config.json with auto_map and the modeling code, the
   tokenizer of SCAN's vocabulary file with SCAN's word rule) plus `conversion.json` (provenance).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from ..errors import UserError, first_line
from ..models.configuration_bfan import BfanConfig
from ..models.configuration_chan import ChanConfig
from ..models.configuration_laps import LapsConfig
from ..models.configuration_scan import ScanConfig
from ..models.configuration_sgraf import SafConfig, SgrConfig
from ..models.configuration_vse_infty import VseInftyConfig
from ..models.modeling_bfan import BfanModel
from ..models.modeling_chan import ChanModel
from ..models.modeling_laps import LapsModel
from ..models.modeling_matcher import MatcherPreTrainedModel
from ..models.modeling_scan import ScanModel
from ..models.modeling_sgraf import SafModel, SgrModel
from ..models.modeling_vse_infty import VseInftyModel
from ..text.tokenization import scan_word_tokenizer
from .integrity import sha256_file

ARCHITECTURES = ("scan", "bfan", "sgraf", "vse_infty", "chan", "laps")
CONVERSION_FILE = "conversion.json"
# The one global a checkpoint may reference besides tensors and plain containers: the options object.
ALLOWED_GLOBALS = {"argparse.Namespace": argparse.Namespace}

# Where the code that saves each layout is published.
ORIGINAL_CODE = {
    "scan": "kuanghuei/SCAN",
    "bfan": "CrossmodalGroup/BFAN",
    "sgraf": "Paranioar/SGRAF",
    "vse_infty": "woodfrog/vse_infty",
    "chan": "ppanzx/CHAN",
    "laps": "CrossmodalGroup/LAPS",
}
# The image encoders each code can save (opt.precomp_enc_type) that are a projection of precomputed
# region features we implement; VSE-infinity's "backbone" (a CNN on pixels) and CHAN's "transformer" are not.
ENCODER_TYPES = {
    "scan": ("basic", "weight_norm"),
    "bfan": ("basic", "weight_norm"),
    "sgraf": ("basic", "weight_norm"),
    "vse_infty": ("basic",),
    "chan": ("basic", "selfattention"),
}
# CHAN's option values -> ours; its self-attention block has a fixed number of heads in its code.
CHAN_CODINGS = {"VHACoding": "t2i", "THACoding": "i2t"}
CHAN_POOLINGS = {
    "LSEPooling": "lse",
    "MeanPooling": "mean",
    "MaxPooling": "max",
    "SumPooling": "sum",
    "SoftmaxPooling": "softmax",
}
CHAN_SELF_ATTENTION_HEADS = 8
# VSE-infinity's and CHAN's train.py append '<mask>' to the SCAN vocabulary (for cloze tests), one
# embedding row more than the vocabulary file; retrieval never uses it.
MASK_WORD_ARCHITECTURES = ("vse_infty", "chan")
# Codes that can train a BERT text encoder (VSE-infinity's master branch, CHAN's text_enc_type=bert; LAPS always).
BERT_ARCHITECTURES = ("vse_infty", "chan", "laps")

# SCAN's option values -> ours.
SCAN_AGGREGATIONS = {"LogSumExp": "lse", "Mean": "avg", "Max": "max", "Sum": "sum"}
SCAN_ATTENTION_NORMS = {
    "clipped_l2norm": "clipped_l2norm",
    "l2norm": "l2norm",
    "softmax": "softmax",
    "no_norm": "none",
}
# Fixed in SGRAF's code, not options: the t2i attention's lambda1 and the pooling dropout.
SGRAF_LAMBDA_SOFTMAX = 9.0
SGRAF_DROPOUT = 0.4

# Original key (regex on "<state dict index>:<key>") -> our parameter name. Index 0 is the image encoder,
# 1 the text encoder, 2 SGRAF's similarity encoder.
Replacement = str | Callable[[re.Match], str]
KEY_RULES: tuple[tuple[str, Replacement], ...] = (
    (r"0:fc\.(weight|bias)", r"region_encoder.projection.\1"),
    (r"1:embed\.weight", "text_encoder.word_embeddings.weight"),
    (r"1:(?:rnn|cap_rnn)\.((?:weight|bias)_(?:ih|hh)_l\d+(?:_reverse)?)", r"text_encoder.gru.\1"),
    (r"2:v_global_w\.embedding_local\.0\.(.+)", r"region_pooling.local_projection.\1"),
    (r"2:v_global_w\.embedding_local\.1\.(.+)", r"region_pooling.local_norm.\1"),
    (r"2:v_global_w\.embedding_global\.0\.(.+)", r"region_pooling.context_projection.\1"),
    (r"2:v_global_w\.embedding_global\.1\.(.+)", r"region_pooling.context_norm.\1"),
    (r"2:v_global_w\.embedding_common\.0\.(.+)", r"region_pooling.gate.\1"),
    (r"2:t_global_w\.embedding_local\.0\.(.+)", r"word_pooling.local_projection.\1"),
    (r"2:t_global_w\.embedding_global\.0\.(.+)", r"word_pooling.context_projection.\1"),
    (r"2:t_global_w\.embedding_common\.0\.(.+)", r"word_pooling.gate.\1"),
    (r"2:sim_tranloc_w\.(.+)", r"local_similarity.\1"),
    (r"2:sim_tranglo_w\.(.+)", r"global_similarity.\1"),
    (r"2:sim_eval_w\.(.+)", r"score_head.\1"),
    (r"2:SGR_module\.(\d+)\.graph_query_w\.(.+)", r"reasoning.\1.query.\2"),
    (r"2:SGR_module\.(\d+)\.graph_key_w\.(.+)", r"reasoning.\1.key.\2"),
    (r"2:SGR_module\.(\d+)\.sim_graph_w\.(.+)", r"reasoning.\1.update.\2"),
    (r"2:SAF_module\.attn_sim_w\.(.+)", r"filtration.gate.\1"),
    (r"2:SAF_module\.bn\.(.+)", r"filtration.norm.\1"),
    # VSE-infinity: GPO on each side, the residual MLP of the region encoder.
    (r"0:gpool\.(.+)", r"region_pooling.\1"),
    (r"1:gpool\.(.+)", r"word_pooling.\1"),
    (r"0:mlp\.layers\.0\.(.+)", r"region_mlp.hidden.\1"),
    (r"0:mlp\.bns\.0\.(.+)", r"region_mlp.norm.\1"),
    (r"0:mlp\.layers\.1\.(.+)", r"region_mlp.output.\1"),
    # VSE-infinity's and CHAN's BERT text encoder: the transformer and its projection to the joint space.
    (r"1:bert\.(.+)", r"text_encoder.transformer.\1"),
    (r"1:linear\.(weight|bias)", r"text_encoder.projection.\1"),
    # CHAN: the region self-attention block (x + MHA(LayerNorm(x))).
    (r"0:feedforward\.ln\.(.+)", r"region_attention.norm.\1"),
    (r"0:feedforward\.attn\.(.+)", r"region_attention.attention.\1"),
)
# Tensors an original code creates but never reads in its forward pass: dropped, with the reason.
DROPPED_TENSORS: dict[str, tuple[tuple[str, str], ...]] = {
    "vse_infty": ((r"0:mlp\.bns\.1\..+", "VSE-infinity's MLP applies no batch norm after its last layer"),),
    "chan": ((r"1:fc\.(weight|bias)", "CHAN's BiGRU text encoder never applies its fc layer"),),
    "laps": (
        (r"0:visual_encoder\.pooler\.dense\.(weight|bias)", "LAPS aligns the ViT's tokens, never its pooler"),
    ),
}
STATE_DICT_NAMES = ("image encoder", "text encoder", "similarity encoder", "criterion")
# LAPS's train.py saves `model` as ONE state dict of its VSEModel: its top-level modules, in that order.
LAPS_PARTS = ("img_enc", "txt_enc", "cross_net", "criterion")


class ConversionError(UserError, ValueError):
    """An original checkpoint that cannot be converted; the message names the file and what is wrong."""


@dataclass
class OriginalCheckpoint:
    """What an original training script saved. state_dicts: image, text (and SGRAF similarity) encoders.

    one_state_dict: `model` was one state dict (LAPS) split by its top-level modules (`LAPS_PARTS`) into
    `state_dicts`, so errors name a tensor as `model.img_enc.<key>` rather than `model[0].<key>`.
    """

    path: Path
    sha256: str
    state_dicts: list[dict[str, torch.Tensor]]
    options: dict[str, Any]
    epoch: Any = None
    best_rsum: Any = None
    eiters: Any = None
    one_state_dict: bool = False

    def source_name(self, source_key: str) -> str:
        """How the checkpoint names the tensor `<state dict index>:<key>`."""
        index, key = source_key.split(":", 1)
        return f"model.{LAPS_PARTS[int(index)]}.{key}" if self.one_state_dict else f"model[{index}].{key}"


@dataclass
class Conversion:
    """A converted model, its tokenizer and the provenance written to `conversion.json`."""

    model: MatcherPreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    architecture: str
    architecture_reason: str
    provenance: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- reading
def refused_globals(path: Path) -> list[str]:
    """Globals of a zip-format checkpoint that weights-only loading does not allow, minus ours.

    Read from the pickle's opcodes without unpickling. Legacy (non-zip) files are checked by the
    weights-only unpickler itself, which refuses a global when it meets it, before calling anything.
    """
    if not zipfile.is_zipfile(path):
        return []
    return [
        name
        for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if name not in ALLOWED_GLOBALS
    ]


def read_original_checkpoint(path: str | Path) -> OriginalCheckpoint:
    """Read a `model_best.pth(.tar)` of the original code without running any code from it."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    refused = refused_globals(path)
    if refused:
        raise _refusal(path, refused)
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS.values())):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if match:
            raise _refusal(path, [match.group(1)]) from err
        raise ConversionError(f"{path}: not a readable checkpoint ({_unpickler_reason(err)})") from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise ConversionError(f"{path}: not a PyTorch checkpoint ({first_line(err)})") from err
    return _checked(path, raw)


def _unpickler_reason(err: Exception) -> str:
    """Why the weights-only unpickler refused a file, without torch's advice around it: that advice is to
    reload with weights_only=False, which runs whatever code the pickle names and must never be followed."""
    match = re.search(r"WeightsUnpickler error: ([^\n]*)", str(err))
    reason = match.group(1) if match else first_line(err)
    reason = re.split(
        r"\s(?:Please|Check the documentation|Re-running|To load|Weights only load failed)", reason
    )[0]
    return (
        "the weights-only unpickler refused it" if "weights_only" in reason or not reason.strip() else reason
    )


def _refusal(path: Path, names: list[str]) -> ConversionError:
    return ConversionError(
        f"{path}: refusing to load: the pickle references {', '.join(names)}; only "
        f"{', '.join(ALLOWED_GLOBALS)} besides tensors is allowed, since unpickling a global can run code"
    )


def _checked(path: Path, raw: Any) -> OriginalCheckpoint:
    if not isinstance(raw, dict) or "model" not in raw or "opt" not in raw:
        found = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise ConversionError(
            f"{path}: expected a dict with 'model' and 'opt' (original layout), found {found}"
        )
    states, options = raw["model"], raw["opt"]
    one_state_dict = isinstance(states, dict)
    if one_state_dict:
        states = _split_one_state_dict(path, states)
    if not isinstance(states, list | tuple) or len(states) not in (2, 3, 4):
        raise ConversionError(
            f"{path}: field 'model' must be a list of 2 to 4 state dicts (image, text[, similarity] encoders"
            f"[, criterion]), "
            f"found {type(states).__name__} of length {len(states) if hasattr(states, '__len__') else '?'}"
        )
    for index, state in enumerate(states):
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConversionError(f"{path}: model[{index}] ({STATE_DICT_NAMES[index]}) is not a state dict")
    if isinstance(options, argparse.Namespace):
        options = vars(options)
    if not isinstance(options, dict):
        raise ConversionError(
            f"{path}: field 'opt' must be an argparse.Namespace, found {type(options).__name__}"
        )
    return OriginalCheckpoint(
        path=path,
        sha256=sha256_file(path),
        state_dicts=[dict(state) for state in states],
        options=dict(options),
        epoch=raw.get("epoch"),
        best_rsum=raw.get("best_rsum"),
        eiters=raw.get("Eiters"),
        one_state_dict=one_state_dict,
    )


def _split_one_state_dict(path: Path, state: dict) -> list[dict[str, torch.Tensor]]:
    """LAPS's `model` (one state dict of its VSEModel) as [img_enc, txt_enc, cross_net, criterion] parts."""
    parts: list[dict[str, torch.Tensor]] = [{} for _ in LAPS_PARTS]
    strays = []
    for key, tensor in state.items():
        part, _, rest = str(key).partition(".")
        if part not in LAPS_PARTS or not rest or not isinstance(tensor, torch.Tensor):
            strays.append(str(key))
            continue
        parts[LAPS_PARTS.index(part)][rest] = tensor
    if strays:
        raise ConversionError(
            f"{path}: field 'model' is one state dict, as LAPS saves it, but {strays[:5]} "
            f"{'are' if len(strays) > 1 else 'is'} not a tensor under {list(LAPS_PARTS)}"
        )
    return parts


# ---------------------------------------------------------------------------- architecture
def guess_architecture(checkpoint: OriginalCheckpoint) -> tuple[str, str]:
    """(one of `ARCHITECTURES`, why) from what only that code saves."""
    options = checkpoint.options
    if checkpoint.one_state_dict:
        return "laps", "model is one state dict of img_enc / txt_enc / cross_net (LAPS's train.py)"
    if "coding_type" in options:
        return "chan", "opt has coding_type (CHAN's train.py)"
    if any(key.startswith("gpool.") for key in checkpoint.state_dicts[0]):
        return "vse_infty", "model[0] holds GPO weights (gpool.*: VSE-infinity's image encoder)"
    if len(checkpoint.state_dicts) == 3 or "module_name" in options:
        return "sgraf", "it holds a similarity-encoder state dict and opt.module_name (SGRAF's train.py)"
    if "focal_type" in options:
        return "bfan", "opt has focal_type (BFAN's train.py)"
    if "cross_attn" in options:
        return "scan", "opt has cross_attn and no focal_type (SCAN's train.py)"
    raise ConversionError(
        f"{checkpoint.path}: cannot tell which code saved it (no coding_type, module_name, focal_type or "
        f"cross_attn in opt, no gpool weights): "
        f"pass --arch {{{','.join(ARCHITECTURES)}}}"
    )


# ---------------------------------------------------------------------------- options -> config
class _Options:
    """Reads `opt` with errors that name the checkpoint, the option and its value."""

    def __init__(self, checkpoint: OriginalCheckpoint):
        self.values, self.path = checkpoint.options, checkpoint.path

    def get(self, name: str, default: Any = ...) -> Any:
        if name in self.values:
            return self.values[name]
        if default is ...:
            raise ConversionError(f"{self.path}: opt has no {name!r}, which the original code needs")
        return default

    def choice(self, name: str, mapping: dict[str, str], why: str = "") -> str:
        value = self.get(name)
        if value not in mapping:
            raise ConversionError(
                f"{self.path}: opt.{name}={value!r} is not supported{why}; supported: {sorted(mapping)}"
            )
        return mapping[value]

    def number(self, name: str, default: Any = ...) -> float:
        """A numeric option as a float; a string, a bool or None is refused naming the option."""
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConversionError(f"{self.path}: opt.{name}={value!r} must be a finite number")
        return float(value)

    def flag(self, name: str, default: bool = False) -> bool:
        """A store_true option; anything but True/False is refused naming the option."""
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise ConversionError(f"{self.path}: opt.{name}={value!r} must be True or False")
        return value

    def matches(self, name: str, found: Any, where: str) -> None:
        """An option that the tensors also tell: they must agree."""
        if name in self.values and self.values[name] != found:
            raise ConversionError(f"{self.path}: opt.{name}={self.values[name]!r} but {where} says {found!r}")


def encoder_options(
    checkpoint: OriginalCheckpoint, vocab_size: int, architecture: str = "scan", extra_rows: int = 0
) -> dict[str, Any]:
    """Shared encoder and loss options, sizes read from the tensors and checked against `opt`.

    extra_rows: embedding rows beyond the vocabulary file that the original code appended ('<mask>').
    """
    options = _Options(checkpoint)
    image, text = checkpoint.state_dicts[0], checkpoint.state_dicts[1]
    projection = image.get("fc.weight", image.get("fc.weight_v"))
    embeddings = text.get("embed.weight")
    if projection is None or embeddings is None:
        raise ConversionError(
            f"{checkpoint.path}: model[0] needs fc.weight (or fc.weight_v) and model[1] embed.weight; found "
            f"{sorted(image)} and {sorted(text)}"
        )
    rnn_keys = [k for k in text if re.fullmatch(r"(?:rnn|cap_rnn)\.weight_ih_l\d+(_reverse)?", k)]
    layers = len({re.search(r"_l(\d+)", k).group(1) for k in rnn_keys})
    bidirectional = any(k.endswith("_reverse") for k in rnn_keys)
    embed_dim, feature_dim = projection.shape
    options.matches("img_dim", feature_dim, f"fc weight {tuple(projection.shape)}")
    options.matches("embed_size", embed_dim, f"fc weight {tuple(projection.shape)}")
    options.matches("word_dim", embeddings.shape[1], f"embed.weight {tuple(embeddings.shape)}")
    options.matches("vocab_size", embeddings.shape[0], f"embed.weight {tuple(embeddings.shape)}")
    options.matches("num_layers", layers, "the GRU weights")
    options.matches("bi_gru", bidirectional, "the GRU weights (_reverse keys)")
    if embeddings.shape[0] != vocab_size + extra_rows:
        raise ConversionError(
            f"{checkpoint.path}: embed.weight has {embeddings.shape[0]} rows but the vocabulary file has "
            f"{vocab_size} words: pass the vocabulary the model was trained with"
        )
    encoder_type = options.get("precomp_enc_type", "basic")
    supported = ENCODER_TYPES[architecture]
    if encoder_type not in supported:
        raise ConversionError(
            f"{checkpoint.path}: opt.precomp_enc_type={encoder_type!r} is not supported; supported: "
            f"{list(supported)} (a projection of precomputed region features)"
        )
    return {
        "feature_dim": int(feature_dim),
        "embed_dim": int(embed_dim),
        "vocab_size": int(vocab_size),
        "word_dim": int(embeddings.shape[1]),
        "num_gru_layers": layers,
        "bidirectional_gru": bidirectional,
        "normalize_regions": not options.flag("no_imgnorm"),
        "normalize_words": not options.flag("no_txtnorm"),
        "loss": "hinge",
        "margin": options.number("margin"),
        "max_violation": options.flag("max_violation"),
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def scan_config(checkpoint: OriginalCheckpoint, shared: dict[str, Any]) -> ScanConfig:
    options = _Options(checkpoint)
    return ScanConfig(
        direction=options.choice("cross_attn", {"t2i": "t2i", "i2t": "i2t"}),
        aggregation=options.choice("agg_func", SCAN_AGGREGATIONS),
        lambda_softmax=options.number("lambda_softmax"),
        lambda_lse=options.number("lambda_lse"),
        attention_norm=options.choice(
            "raw_feature_norm",
            SCAN_ATTENTION_NORMS,
            " (SCAN's own code cannot run l1norm/clipped_l1norm; 'clipped' is not implemented here)",
        ),
        **shared,
    )


def bfan_config(checkpoint: OriginalCheckpoint, shared: dict[str, Any]) -> BfanConfig:
    options = _Options(checkpoint)
    if not shared["bidirectional_gru"]:
        raise ConversionError(
            f"{checkpoint.path}: BFAN's text encoder is a bi-GRU, but model[1] has no _reverse keys"
        )
    return BfanConfig(
        focal=options.choice("focal_type", {"equal": "equal", "prob": "prob"}),
        direction="both",
        lambda_softmax=options.number("lambda_softmax"),
        attention_norm="clipped_l2norm",  # fixed in BFAN's code
        **shared,
    )


def sgraf_config(checkpoint: OriginalCheckpoint, shared: dict[str, Any]) -> SgrConfig | SafConfig:
    options = _Options(checkpoint)
    if len(checkpoint.state_dicts) != 3:
        raise ConversionError(
            f"{checkpoint.path}: an SGRAF checkpoint holds 3 state dicts, found {len(checkpoint.state_dicts)}"
        )
    similarity = checkpoint.state_dicts[2]
    module = options.choice("module_name", {"SGR": "sgr", "SAF": "saf"})
    local_norm = similarity.get("v_global_w.embedding_local.1.running_mean")
    score_head = similarity.get("sim_eval_w.weight")
    if local_norm is None or score_head is None:
        raise ConversionError(
            f"{checkpoint.path}: model[2] needs v_global_w.embedding_local.1.running_mean and sim_eval_w.weight"
        )
    options.matches("sim_dim", score_head.shape[1], f"sim_eval_w.weight {tuple(score_head.shape)}")
    common = {
        "lambda_softmax": SGRAF_LAMBDA_SOFTMAX,
        "attention_norm": "clipped_l2norm",
        "sim_dim": int(score_head.shape[1]),
        # SGRAF batch-normalises over its region slots: their number is the norm's channel count.
        "n_regions": int(local_norm.shape[0]),
        "dropout": SGRAF_DROPOUT,
        **shared,
    }
    if module == "saf":
        return SafConfig(**common)
    steps = len({k.split(".")[1] for k in similarity if k.startswith("SGR_module.")})
    options.matches("sgr_step", steps, "the SGR_module weights")
    return SgrConfig(sgr_steps=steps, **common)


def gpo_sizes(checkpoint: OriginalCheckpoint, index: int) -> tuple[int, int]:
    """(position_dim, hidden_dim) of the GPO in model[index], read from its GRU."""
    state = checkpoint.state_dicts[index]
    weight_ih, weight_hh = state.get("gpool.gru.weight_ih_l0"), state.get("gpool.gru.weight_hh_l0")
    if weight_ih is None or weight_hh is None:
        raise ConversionError(
            f"{checkpoint.path}: model[{index}] ({STATE_DICT_NAMES[index]}) needs VSE-infinity's GPO weights "
            f"gpool.gru.weight_ih_l0 and gpool.gru.weight_hh_l0"
        )
    return int(weight_ih.shape[1]), int(weight_hh.shape[1])


def vse_infty_config(checkpoint: OriginalCheckpoint, shared: dict[str, Any]) -> VseInftyConfig:
    options = _Options(checkpoint)
    image_gpo, text_gpo = gpo_sizes(checkpoint, 0), gpo_sizes(checkpoint, 1)
    if image_gpo != text_gpo:
        raise ConversionError(
            f"{checkpoint.path}: the image and text GPOs differ in size ({image_gpo} vs {text_gpo}); "
            "VSE-infinity builds both as GPO(32, 32)"
        )
    for name, side in (("no_imgnorm", "image"), ("no_txtnorm", "caption")):
        if options.flag(name):
            raise ConversionError(
                f"{checkpoint.path}: opt.{name}=True is not supported: the {side} vector is always "
                "l2-normalised here (the score is a cosine)"
            )
    # VSE-infinity normalises the pooled vectors, never the regions or words before pooling.
    shared = {**shared, "normalize_regions": False, "normalize_words": False}
    return VseInftyConfig(
        region_mlp=options.get("precomp_enc_type", "basic") == "basic",
        gpo_position_dim=image_gpo[0],
        gpo_hidden_dim=image_gpo[1],
        **shared,
    )


def chan_config(checkpoint: OriginalCheckpoint, shared: dict[str, Any]) -> ChanConfig:
    options = _Options(checkpoint)
    options.choice(
        "criterion",
        {"ContrastiveLoss": "hinge"},
        " (CHAN's InfoNCELoss puts the margin inside and averages: not our infonce)",
    )
    alpha = options.get("alpha", None)
    return ChanConfig(
        direction=options.choice(
            "coding_type",
            CHAN_CODINGS,
            " (VSACoding is CHAN's soft, SCAN-like coding, not its hard assignment)",
        ),
        pooling=options.choice("pooling_type", CHAN_POOLINGS),
        pooling_temperature=options.number("belta"),
        region_self_attention=options.get("precomp_enc_type", "basic") == "selfattention",
        self_attention_heads=CHAN_SELF_ATTENTION_HEADS,
        # alpha is the temperature of CHAN's soft coding: ours for the soft constraint assignment.
        **({} if alpha is None else {"assignment_temperature": options.number("alpha")}),
        **shared,
    )


CONFIG_BUILDERS: dict[str, Callable[[OriginalCheckpoint, dict[str, Any]], Any]] = {
    "scan": scan_config,
    "bfan": bfan_config,
    "sgraf": sgraf_config,
    "vse_infty": vse_infty_config,
    "chan": chan_config,
}
MODEL_CLASSES = {
    ScanConfig: ScanModel,
    BfanConfig: BfanModel,
    SgrConfig: SgrModel,
    SafConfig: SafModel,
    VseInftyConfig: VseInftyModel,
    ChanConfig: ChanModel,
    LapsConfig: LapsModel,
}


# ---------------------------------------------------------------------------- weights -> modules
def mapped_state_dict(
    checkpoint: OriginalCheckpoint,
    target: dict[str, torch.Tensor],
    architecture: str = "scan",
) -> tuple[dict, list[str]]:
    """Our state dict from the original tensors, and notes on what was transformed.

    Every source tensor is used exactly once and every target tensor is filled (same shape), or the
    error lists the leftovers on each side; tensors the original forward never reads
    (`DROPPED_TENSORS`) are dropped with a note; a non-finite value is refused, naming the tensor.
    Original keys are renamed by `KEY_RULES` (LAPS's by `LAPS_KEY_RULES`).
    """
    rules = LAPS_KEY_RULES if architecture == "laps" else KEY_RULES
    sources = {
        f"{index}:{key}": tensor
        for index, state in enumerate(checkpoint.state_dicts)
        for key, tensor in state.items()
    }
    refuse_non_finite(checkpoint, sources)
    notes = []
    for pattern, reason in DROPPED_TENSORS.get(architecture, ()):
        dropped = [key for key in sources if re.fullmatch(pattern, key)]
        for key in dropped:
            del sources[key]
        if dropped:
            notes.append(f"dropped {[checkpoint.source_name(k) for k in dropped]}: {reason}")
    if "0:fc.weight_g" in sources and "0:fc.weight_v" in sources:
        sources["0:fc.weight"] = _fold_weight_norm(
            checkpoint.path, sources.pop("0:fc.weight_g"), sources.pop("0:fc.weight_v")
        )
        notes.append(
            "opt.precomp_enc_type=weight_norm: fc.weight = weight_g * weight_v / ||weight_v|| (same function)"
        )
    mapped: dict[str, torch.Tensor] = {}
    leftovers = []
    for source_key, tensor in sources.items():
        target_key = _target_key(source_key, rules)
        if target_key is None or target_key not in target or target_key in mapped:
            leftovers.append(source_key)
            continue
        if tuple(tensor.shape) != tuple(target[target_key].shape):
            raise ConversionError(
                f"{checkpoint.path}: {checkpoint.source_name(source_key)} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target[target_key].shape)} for {target_key}"
            )
        mapped[target_key] = tensor.to(target[target_key].dtype)
    missing = [key for key in target if key not in mapped]
    if leftovers or missing:
        raise ConversionError(
            f"{checkpoint.path}: weights do not match the model: unused original tensors "
            f"{[checkpoint.source_name(k) for k in leftovers]}; model tensors with no source {missing}"
        )
    return mapped, notes


def refuse_non_finite(checkpoint: OriginalCheckpoint, sources: dict[str, torch.Tensor]) -> None:
    """A NaN or infinite weight is refused, naming the tensor."""
    for source_key, tensor in sources.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ConversionError(
                f"{checkpoint.path}: {checkpoint.source_name(source_key)} has {bad} NaN or infinite value(s) of "
                f"{tensor.numel()}: the checkpoint is damaged or was saved after training diverged"
            )


def _target_key(source_key: str, rules: tuple[tuple[str, Replacement], ...]) -> str | None:
    for pattern, replacement in rules:
        if re.fullmatch(pattern, source_key):
            return re.sub(pattern, replacement, source_key)
    return None


def _fold_weight_norm(path: Path, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SCAN's `weight_norm(fc, dim=None)`: one scale g for the whole matrix v."""
    if g.numel() != 1:
        raise ConversionError(
            f"{path}: fc.weight_g has shape {tuple(g.shape)}; only weight_norm(dim=None) (one scale) is supported"
        )
    return g.reshape(()) * v / v.norm()


# ---------------------------------------------------------------------------- LAPS
# opt.vit_type -> the transformers model LAPS's encoders.py loads, as a timm tower computing the same function:
# a ViTModel's last_hidden_state is every token after the final LayerNorm (eps 1e-12), [CLS] first; a
# SwinModel's is the last stage after its final LayerNorm. Both read ImageNet-normalised images.
LAPS_TOWERS: dict[str, dict[str, Any]] = {
    "vit": {
        "architecture": "vit_base_patch16_224",
        "final_norm": True,
        "class_token": True,
        "layer_norm_eps": 1e-12,
    },
    "swin": {"architecture": "swin_base_patch4_window7_224"},
}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# Fixed in LAPS's code, not options: the aggregation MLP's width (dim_ratio) and the leaky-ReLU slope.
LAPS_AGGREGATION_HIDDEN_RATIO = 0.2
LAPS_LEAKY_SLOPE = 0.1
_V, _T = r"0:visual_encoder\.", "vision_tower.model."
_VIT_LAYER, _SWIN_BLOCK = rf"{_V}encoder\.layer\.(\d+)\.", rf"{_V}encoder\.layers\.(\d+)\.blocks\.(\d+)\."
# transformers 4.x names (what LAPS saved) -> timm's; query/key/value are fused into qkv first.
LAPS_KEY_RULES: tuple[tuple[str, Replacement], ...] = (
    (rf"{_V}embeddings\.cls_token", f"{_T}cls_token"),
    (rf"{_V}embeddings\.position_embeddings", f"{_T}pos_embed"),
    (rf"{_V}embeddings\.patch_embeddings\.projection\.(weight|bias)", rf"{_T}patch_embed.proj.\1"),
    (rf"{_V}embeddings\.norm\.(weight|bias)", rf"{_T}patch_embed.norm.\1"),
    (rf"{_V}layernorm\.(weight|bias)", rf"{_T}norm.\1"),
    (rf"{_VIT_LAYER}layernorm_before\.(weight|bias)", rf"{_T}blocks.\1.norm1.\2"),
    (rf"{_VIT_LAYER}attention\.attention\.qkv\.(weight|bias)", rf"{_T}blocks.\1.attn.qkv.\2"),
    (rf"{_VIT_LAYER}attention\.output\.dense\.(weight|bias)", rf"{_T}blocks.\1.attn.proj.\2"),
    (rf"{_VIT_LAYER}layernorm_after\.(weight|bias)", rf"{_T}blocks.\1.norm2.\2"),
    (rf"{_VIT_LAYER}intermediate\.dense\.(weight|bias)", rf"{_T}blocks.\1.mlp.fc1.\2"),
    (rf"{_VIT_LAYER}output\.dense\.(weight|bias)", rf"{_T}blocks.\1.mlp.fc2.\2"),
    (rf"{_SWIN_BLOCK}layernorm_before\.(weight|bias)", rf"{_T}layers.\1.blocks.\2.norm1.\3"),
    (rf"{_SWIN_BLOCK}attention\.self\.qkv\.(weight|bias)", rf"{_T}layers.\1.blocks.\2.attn.qkv.\3"),
    (
        rf"{_SWIN_BLOCK}attention\.self\.relative_position_bias_table",
        rf"{_T}layers.\1.blocks.\2.attn.relative_position_bias_table",
    ),
    (rf"{_SWIN_BLOCK}attention\.output\.dense\.(weight|bias)", rf"{_T}layers.\1.blocks.\2.attn.proj.\3"),
    (rf"{_SWIN_BLOCK}layernorm_after\.(weight|bias)", rf"{_T}layers.\1.blocks.\2.norm2.\3"),
    (rf"{_SWIN_BLOCK}intermediate\.dense\.(weight|bias)", rf"{_T}layers.\1.blocks.\2.mlp.fc1.\3"),
    (rf"{_SWIN_BLOCK}output\.dense\.(weight|bias)", rf"{_T}layers.\1.blocks.\2.mlp.fc2.\3"),
    # transformers merges patches at the END of stage i, timm at the START of stage i + 1.
    (
        rf"{_V}encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)",
        lambda match: f"{_T}layers.{int(match[1]) + 1}.downsample.{match[2]}.{match[3]}",
    ),
    (r"0:vision_proj\.(weight|bias)", r"region_encoder.projection.\1"),
    (r"1:bert\.(.+)", r"text_encoder.transformer.\1"),
    (r"1:fc\.(weight|bias)", r"text_encoder.projection.\1"),
    (r"2:aggr_net\.weight\.0\.(weight|bias)", r"aggregation.norm.\1"),
    (r"2:aggr_net\.weight\.1\.(weight|bias)", r"aggregation.hidden.\1"),
    (r"2:aggr_net\.weight\.3\.(weight|bias)", r"aggregation.output.\1"),
    (r"2:aggr_net\.scale", "aggregation.scale"),
)
_QKV = re.compile(r"(visual_encoder\..+\.attention\.(?:attention|self))\.(query|key|value)\.(weight|bias)")
_RELATIVE_INDEX = re.compile(
    r"visual_encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_index"
)


def laps_tower_kind(checkpoint: OriginalCheckpoint) -> str:
    """ "vit" or "swin", as LAPS's encoders.py decides it: a SwinModel when 'swin' is in opt.vit_type."""
    vit_type = _Options(checkpoint).get("vit_type")
    if not isinstance(vit_type, str):
        raise ConversionError(
            f"{checkpoint.path}: opt.vit_type={vit_type!r} must be a string ('vit' or 'swin')"
        )
    return "swin" if "swin" in vit_type else "vit"


def laps_identity_projections(checkpoint: OriginalCheckpoint) -> list[str]:
    """LAPS uses nn.Identity for vision_proj / txt_enc.fc when embed_size equals the encoder's width: give
    them as identity matrices (the same function), with a note each."""
    embed_dim = int(_Options(checkpoint).number("embed_size"))
    notes = []
    for index, name, width_key in (
        (0, "vision_proj", "visual_encoder.layernorm.weight"),
        (1, "fc", "bert.embeddings.word_embeddings.weight"),
    ):
        state = checkpoint.state_dicts[index]
        width = state.get(width_key)
        if f"{name}.weight" in state or width is None or width.shape[-1] != embed_dim:
            continue
        state[f"{name}.weight"] = torch.eye(embed_dim, dtype=width.dtype)
        state[f"{name}.bias"] = torch.zeros(embed_dim, dtype=width.dtype)
        notes.append(
            f"{checkpoint.source_name(f'{index}:{name}')} is nn.Identity (embed_size {embed_dim} = the encoder's "
            "width): an identity projection here"
        )
    return notes


def laps_config(
    checkpoint: OriginalCheckpoint, shared: dict[str, Any], vision_architecture: str | None = None
) -> LapsConfig:
    """LAPS's options and tensor sizes -> our config, its tower the timm model that computes what LAPS's
    transformers ViT / Swin does (`vision_architecture` overrides the timm name, for a LAPS run whose code
    was changed to load another ViT or Swin)."""
    options = _Options(checkpoint)
    options.choice(
        "loss", {"vse": "hinge"}, " (LAPS's TripletLoss mines negatives differently: not our hinge)"
    )
    kind = laps_tower_kind(checkpoint)
    tower = {
        **LAPS_TOWERS[kind],
        "image_size": int(options.number("img_res", 224)),
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
    }
    if vision_architecture is not None:
        tower["architecture"] = vision_architecture
    num_patches = options.number("num_patches")
    keep, aggregation = options.number("sparse_ratio"), options.number("aggr_ratio")
    cross_net = checkpoint.state_dicts[2]
    output, hidden = cross_net.get("aggr_net.weight.3.weight"), cross_net.get("aggr_net.weight.1.weight")
    if output is None or hidden is None:
        raise ConversionError(
            f"{checkpoint.path}: model.cross_net.aggr_net.weight.1.weight and .3.weight (LAPS's aggregation "
            f"MLP) are needed; found {sorted(cross_net)[:6]}"
        )
    expected = int(num_patches * aggregation * keep)
    if output.shape[0] != expected:
        raise ConversionError(
            f"{checkpoint.path}: opt.num_patches={num_patches:g}, sparse_ratio={keep:g} and aggr_ratio={aggregation:g} "
            f"give {expected} aggregated tokens, but model.cross_net.aggr_net.weight.3.weight has {output.shape[0]} rows"
        )
    config = LapsConfig(
        num_patches=int(num_patches),
        keep_ratio=keep,
        aggregation_ratio=aggregation,
        aggregation_hidden_ratio=LAPS_AGGREGATION_HIDDEN_RATIO,
        # LAPS aligns the [CLS] beside the slimmed tokens when the token count is not a square: a ViT's.
        cls_token=kind == "vit",
        direction="both",
        leaky_slope=LAPS_LEAKY_SLOPE,
        vision_tower=tower,
        **shared,
    )
    if hidden.shape[0] != config.aggregation_hidden_dim:
        raise ConversionError(
            f"{checkpoint.path}: model.cross_net.aggr_net.weight.1.weight has {hidden.shape[0]} rows; LAPS's code "
            f"sizes it int({config.embed_dim} * {LAPS_AGGREGATION_HIDDEN_RATIO}) = {config.aggregation_hidden_dim}"
        )
    return config


def prepare_laps_tensors(checkpoint: OriginalCheckpoint, model: MatcherPreTrainedModel) -> list[str]:
    """LAPS's tensors in the shapes our modules take: query/key/value fused into timm's qkv, Swin's saved
    relative-position indices checked against timm's and dropped, the aggregation scale as a scalar."""
    image, notes = checkpoint.state_dicts[0], []
    matches = [match for match in map(_QKV.fullmatch, image) if match]
    # Checked before fusing, so that an error names the tensor the checkpoint holds; the rest are checked
    # with every other tensor when they are mapped.
    refuse_non_finite(checkpoint, {f"0:{match[0]}": image[match[0]] for match in matches})
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for match in matches:
        groups.setdefault((match[1], match[3]), {})[match[2]] = image.pop(match[0])
    for (owner, kind), parts in groups.items():
        missing = [name for name in ("query", "key", "value") if name not in parts]
        if missing:
            raise ConversionError(
                f"{checkpoint.path}: {checkpoint.source_name(f'0:{owner}.{missing[0]}.{kind}')} is missing "
                f"(found {sorted(parts)}): attention needs query, key and value"
            )
        image[f"{owner}.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    if groups:
        notes.append(
            f"fused query/key/value of {len(groups) // 2} attention layers into timm's qkv (concatenated in "
            "that order: the same function)"
        )
    buffers = dict(model.named_buffers())
    indices = [match for match in map(_RELATIVE_INDEX.fullmatch, image) if match]
    for match in indices:
        key, (stage, block) = match[0], match.groups()
        ours = buffers.get(f"{_T}layers.{stage}.blocks.{block}.attn.relative_position_index")
        saved = image.pop(key)
        if ours is None or not torch.equal(saved.long().reshape(ours.shape), ours.long()):
            raise ConversionError(
                f"{checkpoint.path}: {checkpoint.source_name(f'0:{key}')} does not match the window layout of "
                f"{model.config.vision_tower['architecture']!r}"
            )
    if indices:
        notes.append(
            f"checked and dropped {len(indices)} Swin relative_position_index buffers (equal to timm's, which "
            "it rebuilds)"
        )
    scale = checkpoint.state_dicts[2].get("aggr_net.scale")
    if scale is not None and scale.numel() == 1:
        checkpoint.state_dicts[2]["aggr_net.scale"] = scale.reshape(())
    return notes


# ---------------------------------------------------------------------------- conversion
def has_bert_text_encoder(checkpoint: OriginalCheckpoint) -> bool:
    return any(key.startswith("bert.") for key in checkpoint.state_dicts[1])


def bert_encoder_options(
    checkpoint: OriginalCheckpoint, folder: Path, architecture: str
) -> tuple[dict[str, Any], PreTrainedTokenizerBase, list[str]]:
    """Shared options of a checkpoint whose text encoder is BERT (VSE-infinity's master branch, CHAN's
    `text_enc_type=bert`), the tokenizer of `folder` (the transformers folder of that BERT: config and fast
    tokenizer, no weights needed) and notes. Sizes are read from the tensors and checked against both."""
    options = _Options(checkpoint)
    if architecture not in BERT_ARCHITECTURES:
        raise ConversionError(
            f"{checkpoint.path}: a BERT text encoder is only known in VSE-infinity, CHAN and LAPS checkpoints"
        )
    try:
        encoder_config = AutoConfig.from_pretrained(folder).to_dict()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # OSError, ValueError, ... for a missing or malformed folder
        raise ConversionError(
            f"--text-encoder {folder}: not a transformers folder with a config and tokenizer ({first_line(err)})"
        ) from err
    if not tokenizer.is_fast:
        raise ConversionError(
            f"--text-encoder {folder}: needs a fast tokenizer (tokenizer.json), found a slow one"
        )
    image, text = checkpoint.state_dicts[0], checkpoint.state_dicts[1]
    image_key, text_key = ("vision_proj", "fc") if architecture == "laps" else ("fc", "linear")
    projection, text_projection = image.get(f"{image_key}.weight"), text.get(f"{text_key}.weight")
    word_embeddings = text.get("bert.embeddings.word_embeddings.weight")
    embeddings_name = checkpoint.source_name("1:bert.embeddings.word_embeddings.weight")
    projection_name = checkpoint.source_name(f"0:{image_key}.weight")
    text_projection_name = checkpoint.source_name(f"1:{text_key}.weight")
    if projection is None or text_projection is None or word_embeddings is None:
        raise ConversionError(
            f"{checkpoint.path}: {projection_name}, {text_projection_name} and {embeddings_name} are needed; "
            f"found {sorted(image)[:8]} and {sorted(text)[:8]}"
        )
    embed_dim, feature_dim = projection.shape
    for name, value, where in (
        ("hidden_size", text_projection.shape[1], f"{text_projection_name} {tuple(text_projection.shape)}"),
        ("vocab_size", word_embeddings.shape[0], f"{embeddings_name} {tuple(word_embeddings.shape)}"),
    ):
        if encoder_config.get(name) != value:
            raise ConversionError(
                f"--text-encoder {folder}: its config has {name}={encoder_config.get(name)!r} but {where} says {value}: "
                "pass the BERT the model was trained from"
            )
    if text_projection.shape[0] != embed_dim:
        raise ConversionError(
            f"{checkpoint.path}: {text_projection_name} maps to {text_projection.shape[0]} dims but "
            f"{projection_name} to {embed_dim}"
        )
    options.matches("embed_size", embed_dim, f"{projection_name} {tuple(projection.shape)}")
    if architecture != "laps":
        options.matches("img_dim", feature_dim, f"fc weight {tuple(projection.shape)}")
        encoder_type = options.get("precomp_enc_type", "basic")
        if encoder_type not in ENCODER_TYPES[architecture]:
            raise ConversionError(
                f"{checkpoint.path}: opt.precomp_enc_type={encoder_type!r} is not supported; supported: "
                f"{list(ENCODER_TYPES[architecture])} (a projection of precomputed region features)"
            )
    notes = []
    position_ids = text.get("bert.embeddings.position_ids")
    position_ids_name = checkpoint.source_name("1:bert.embeddings.position_ids")
    if position_ids is not None:
        # Older transformers saved this constant buffer; today it is rebuilt, so it must be the usual range.
        if not torch.equal(
            position_ids.reshape(-1), torch.arange(position_ids.numel(), dtype=position_ids.dtype)
        ):
            raise ConversionError(f"{checkpoint.path}: {position_ids_name} is not 0..n-1")
        del text["bert.embeddings.position_ids"]
        notes.append(f"dropped {position_ids_name} (a constant 0..n-1 buffer, rebuilt by transformers)")
    shared = {
        "feature_dim": int(feature_dim),
        "embed_dim": int(embed_dim),
        "vocab_size": int(word_embeddings.shape[0]),
        "text_encoder_name": folder.name,
        "text_encoder_config": encoder_config,
        # LAPS's slimming averages and mixes the raw projections and normalises its tokens itself.
        "normalize_regions": architecture != "laps" and not options.flag("no_imgnorm"),
        "normalize_words": architecture != "laps" and not options.flag("no_txtnorm"),
        "loss": "hinge",
        "margin": options.number("margin"),
        # LAPS's train.py turns the hardest negative on after its summed warm-up whatever opt.max_violation says.
        "max_violation": architecture == "laps" or options.flag("max_violation"),
        # The original code masks BERT's input with (ids != 0): BERT's own [PAD] id.
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    return shared, tokenizer, notes


def convert_checkpoint(
    checkpoint_path: str | Path,
    vocab_path: str | Path | None,
    architecture: str | None = None,
    text_encoder: str | Path | None = None,
    vision_architecture: str | None = None,
) -> Conversion:
    """The model of an original checkpoint, with the tokenizer of its vocabulary file (a word GRU) or of the
    transformers folder `text_encoder` (a BERT text encoder: VSE-infinity, CHAN, LAPS). vision_architecture:
    for LAPS, the timm name of its vision transformer when not the one LAPS's code loads."""
    checkpoint = read_original_checkpoint(checkpoint_path)
    if architecture is None:
        architecture, reason = guess_architecture(checkpoint)
    elif architecture not in ARCHITECTURES:
        raise ConversionError(f"--arch must be one of {list(ARCHITECTURES)}, got {architecture!r}")
    else:
        reason = "given with --arch"
    if (architecture == "laps") != checkpoint.one_state_dict:
        raise ConversionError(
            f"{checkpoint.path}: {architecture} checkpoints keep `model` as "
            f"{'one state dict' if architecture == 'laps' else 'a list of state dicts'}, this one does not"
        )
    if vision_architecture is not None and architecture != "laps":
        raise ConversionError(f"--vision-architecture is for LAPS checkpoints; this one is {architecture}")
    notes = laps_identity_projections(checkpoint) if architecture == "laps" else []
    if has_bert_text_encoder(checkpoint):
        if text_encoder is None:
            raise ConversionError(
                f"{checkpoint.path}: its text encoder is BERT ({checkpoint.source_name('1:bert.*')}): pass --text-encoder DIR, the "
                "transformers folder (config and tokenizer) of the BERT it was trained from, e.g. bert-base-uncased"
            )
        shared, tokenizer, bert_notes = bert_encoder_options(checkpoint, Path(text_encoder), architecture)
        notes += bert_notes
    else:
        if vocab_path is None or text_encoder is not None:
            raise ConversionError(
                f"{checkpoint.path}: its text encoder is a word GRU (model[1].embed.weight): pass --vocab "
                "VOCAB.json, the vocabulary it was trained with (not --text-encoder)"
            )
        tokenizer = scan_word_tokenizer(vocab_path)
        extra_rows = mask_word_rows(checkpoint, architecture, len(tokenizer))
        shared = encoder_options(checkpoint, len(tokenizer), architecture, extra_rows)
        if extra_rows:
            embeddings = checkpoint.state_dicts[1]["embed.weight"]
            checkpoint.state_dicts[1]["embed.weight"] = embeddings[: len(tokenizer)]
            notes.append(
                f"dropped embed.weight row {len(tokenizer)} ('<mask>', appended to the vocabulary by the "
                "original train.py for cloze tests; retrieval never uses it)"
            )
    builder = (
        functools.partial(laps_config, vision_architecture=vision_architecture)
        if architecture == "laps"
        else CONFIG_BUILDERS[architecture]
    )
    try:
        config = builder(checkpoint, shared)
    except (ValueError, TypeError) as err:
        if isinstance(err, UserError):
            raise
        raise ConversionError(
            f"{checkpoint.path}: options give an invalid {architecture} config: {err}"
        ) from err
    model = MODEL_CLASSES[type(config)](config)
    if architecture == "laps":
        notes += prepare_laps_tensors(checkpoint, model)
    weights, weight_notes = mapped_state_dict(checkpoint, model.state_dict(), architecture)
    notes += weight_notes
    model.load_state_dict(weights, strict=True)
    model.eval()
    provenance = {
        "converted_from": checkpoint.path.name,
        "sha256": checkpoint.sha256,
        "architecture": architecture,
        "architecture_reason": reason,
        "original_code": ORIGINAL_CODE[architecture],
        "model_type": config.model_type,
        "epoch": checkpoint.epoch,
        "best_rsum": checkpoint.best_rsum,
        "eiters": checkpoint.eiters,
        **(
            {"vocabulary_file": Path(vocab_path).name, "vocabulary_sha256": sha256_file(Path(vocab_path))}
            if text_encoder is None
            else {"text_encoder_folder": Path(text_encoder).name}
        ),
        "notes": notes,
        "options": checkpoint.options,
    }
    return Conversion(model, tokenizer, architecture, reason, json.loads(json.dumps(provenance, default=str)))


def mask_word_rows(checkpoint: OriginalCheckpoint, architecture: str, vocab_size: int) -> int:
    """1 when the text embedding has the '<mask>' row VSE-infinity's and CHAN's train.py append, else 0."""
    embeddings = checkpoint.state_dicts[1].get("embed.weight")
    if (
        architecture in MASK_WORD_ARCHITECTURES
        and embeddings is not None
        and embeddings.shape[0] == vocab_size + 1
    ):
        return 1
    return 0


def write_conversion(conversion: Conversion, output_dir: str | Path) -> Path:
    """Save the model folder: weights, config with auto_map and code, tokenizer, conversion.json."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConversionError(f"{output_dir} exists and is not empty: choose a new output folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    conversion.model.save_pretrained(output_dir)
    conversion.tokenizer.save_pretrained(output_dir)
    (output_dir / CONVERSION_FILE).write_text(json.dumps(conversion.provenance, indent=2) + "\n")
    return output_dir
