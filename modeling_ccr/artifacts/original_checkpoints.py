"""Checkpoints trained with the original SCAN, BFAN and SGRAF code, converted into model folders.

The original training scripts (kuanghuei/SCAN, CrossmodalGroup/BFAN, Paranioar/SGRAF) save a pickled
dict: `model` (a list of state dicts: image encoder, text encoder and, for SGRAF, the similarity
encoder), `opt` (the `argparse.Namespace` of training options), `epoch`, `best_rsum`, `Eiters`.

1. Reading: `torch.load(weights_only=True)` with `argparse.Namespace` allowed for this one call. Any other
   global in the pickle is refused, naming it, before anything is unpickled (a pickle's globals are how it
   runs code).
2. Options -> config: every option that shapes the model is mapped onto our config or refused with the
   option and its value; sizes are read from the tensors and checked against the options.
3. Weights -> modules: each original key has one place in our modules; every source tensor is used once
   and every target filled, or the error lists what is left over on either side.
4. Output: an ordinary model folder (safetensors, config.json with auto_map and the modeling code, the
   tokenizer of SCAN's vocabulary file with SCAN's word rule) plus `conversion.json` (provenance).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from ..errors import UserError, first_line
from ..models.configuration_bfan import BfanConfig
from ..models.configuration_scan import ScanConfig
from ..models.configuration_sgraf import SafConfig, SgrConfig
from ..models.modeling_bfan import BfanModel
from ..models.modeling_matcher import MatcherPreTrainedModel
from ..models.modeling_scan import ScanModel
from ..models.modeling_sgraf import SafModel, SgrModel
from ..text.tokenization import scan_word_tokenizer
from .integrity import sha256_file

ARCHITECTURES = ("scan", "bfan", "sgraf")
CONVERSION_FILE = "conversion.json"
# The one global a checkpoint may reference besides tensors and plain containers: the options object.
ALLOWED_GLOBALS = {"argparse.Namespace": argparse.Namespace}

# Where the code that saves each layout is published.
ORIGINAL_CODE = {"scan": "kuanghuei/SCAN", "bfan": "CrossmodalGroup/BFAN", "sgraf": "Paranioar/SGRAF"}

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
KEY_RULES: tuple[tuple[str, str], ...] = (
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
)
STATE_DICT_NAMES = ("image encoder", "text encoder", "similarity encoder")


class ConversionError(UserError, ValueError):
    """An original checkpoint that cannot be converted; the message names the file and what is wrong."""


@dataclass
class OriginalCheckpoint:
    """What an original training script saved. state_dicts: image, text (and SGRAF similarity) encoders."""

    path: Path
    sha256: str
    state_dicts: list[dict[str, torch.Tensor]]
    options: dict[str, Any]
    epoch: Any = None
    best_rsum: Any = None
    eiters: Any = None


@dataclass
class Conversion:
    """A converted model, its tokenizer and the provenance written to `conversion.json`."""

    model: MatcherPreTrainedModel
    tokenizer: PreTrainedTokenizerFast
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
    """Read a `model_best.pth.tar` of SCAN, BFAN or SGRAF without running any code from it."""
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
        raise ConversionError(f"{path}: not a readable checkpoint ({first_line(err)})") from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise ConversionError(f"{path}: not a PyTorch checkpoint ({first_line(err)})") from err
    return _checked(path, raw)


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
    if not isinstance(states, list | tuple) or len(states) not in (2, 3):
        raise ConversionError(
            f"{path}: field 'model' must be a list of 2 or 3 state dicts (image, text[, similarity] encoders), "
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
    )


# ---------------------------------------------------------------------------- architecture
def guess_architecture(checkpoint: OriginalCheckpoint) -> tuple[str, str]:
    """("scan" | "bfan" | "sgraf", why) from what only that code saves."""
    options = checkpoint.options
    if len(checkpoint.state_dicts) == 3 or "module_name" in options:
        return "sgraf", "it holds a similarity-encoder state dict and opt.module_name (SGRAF's train.py)"
    if "focal_type" in options:
        return "bfan", "opt has focal_type (BFAN's train.py)"
    if "cross_attn" in options:
        return "scan", "opt has cross_attn and no focal_type (SCAN's train.py)"
    raise ConversionError(
        f"{checkpoint.path}: cannot tell which code saved it (no module_name, focal_type or cross_attn in opt): "
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

    def matches(self, name: str, found: Any, where: str) -> None:
        """An option that the tensors also tell: they must agree."""
        if name in self.values and self.values[name] != found:
            raise ConversionError(f"{self.path}: opt.{name}={self.values[name]!r} but {where} says {found!r}")


def encoder_options(checkpoint: OriginalCheckpoint, vocab_size: int) -> dict[str, Any]:
    """Shared encoder and loss options, sizes read from the tensors and checked against `opt`."""
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
    if embeddings.shape[0] != vocab_size:
        raise ConversionError(
            f"{checkpoint.path}: embed.weight has {embeddings.shape[0]} rows but the vocabulary file has "
            f"{vocab_size} words: pass the vocabulary the model was trained with"
        )
    encoder_type = options.get("precomp_enc_type", "basic")
    if encoder_type not in ("basic", "weight_norm"):
        raise ConversionError(
            f"{checkpoint.path}: opt.precomp_enc_type={encoder_type!r} is not supported; supported: "
            "['basic', 'weight_norm'] (a linear projection of precomputed region features)"
        )
    return {
        "feature_dim": int(feature_dim),
        "embed_dim": int(embed_dim),
        "vocab_size": int(vocab_size),
        "word_dim": int(embeddings.shape[1]),
        "num_gru_layers": layers,
        "bidirectional_gru": bidirectional,
        "normalize_regions": not options.get("no_imgnorm"),
        "normalize_words": not options.get("no_txtnorm"),
        "loss": "hinge",
        "margin": float(options.get("margin")),
        "max_violation": bool(options.get("max_violation")),
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def scan_config(checkpoint: OriginalCheckpoint, shared: dict[str, Any]) -> ScanConfig:
    options = _Options(checkpoint)
    return ScanConfig(
        direction=options.choice("cross_attn", {"t2i": "t2i", "i2t": "i2t"}),
        aggregation=options.choice("agg_func", SCAN_AGGREGATIONS),
        lambda_softmax=float(options.get("lambda_softmax")),
        lambda_lse=float(options.get("lambda_lse")),
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
        lambda_softmax=float(options.get("lambda_softmax")),
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


CONFIG_BUILDERS: dict[str, Callable[[OriginalCheckpoint, dict[str, Any]], Any]] = {
    "scan": scan_config,
    "bfan": bfan_config,
    "sgraf": sgraf_config,
}
MODEL_CLASSES = {
    ScanConfig: ScanModel,
    BfanConfig: BfanModel,
    SgrConfig: SgrModel,
    SafConfig: SafModel,
}


# ---------------------------------------------------------------------------- weights -> modules
def mapped_state_dict(
    checkpoint: OriginalCheckpoint, target: dict[str, torch.Tensor]
) -> tuple[dict, list[str]]:
    """Our state dict from the original tensors, and notes on what was transformed.

    Every source tensor is used exactly once and every target tensor is filled (same shape), or the
    error lists the leftovers on each side.
    """
    sources = {
        f"{index}:{key}": tensor
        for index, state in enumerate(checkpoint.state_dicts)
        for key, tensor in state.items()
    }
    notes = []
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
        target_key = _target_key(source_key)
        if target_key is None or target_key not in target or target_key in mapped:
            leftovers.append(source_key)
            continue
        if tuple(tensor.shape) != tuple(target[target_key].shape):
            raise ConversionError(
                f"{checkpoint.path}: {_source_name(source_key)} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target[target_key].shape)} for {target_key}"
            )
        mapped[target_key] = tensor.to(target[target_key].dtype)
    missing = [key for key in target if key not in mapped]
    if leftovers or missing:
        raise ConversionError(
            f"{checkpoint.path}: weights do not match the model: unused original tensors "
            f"{[_source_name(k) for k in leftovers]}; model tensors with no source {missing}"
        )
    return mapped, notes


def _target_key(source_key: str) -> str | None:
    for pattern, replacement in KEY_RULES:
        if re.fullmatch(pattern, source_key):
            return re.sub(pattern, replacement, source_key)
    return None


def _source_name(source_key: str) -> str:
    index, key = source_key.split(":", 1)
    return f"model[{index}].{key}"


def _fold_weight_norm(path: Path, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SCAN's `weight_norm(fc, dim=None)`: one scale g for the whole matrix v."""
    if g.numel() != 1:
        raise ConversionError(
            f"{path}: fc.weight_g has shape {tuple(g.shape)}; only weight_norm(dim=None) (one scale) is supported"
        )
    return g.reshape(()) * v / v.norm()


# ---------------------------------------------------------------------------- conversion
def convert_checkpoint(
    checkpoint_path: str | Path, vocab_path: str | Path, architecture: str | None = None
) -> Conversion:
    """The model of an original checkpoint, with the tokenizer of its vocabulary file."""
    checkpoint = read_original_checkpoint(checkpoint_path)
    if architecture is None:
        architecture, reason = guess_architecture(checkpoint)
    elif architecture not in ARCHITECTURES:
        raise ConversionError(f"--arch must be one of {list(ARCHITECTURES)}, got {architecture!r}")
    else:
        reason = "given with --arch"
    tokenizer = scan_word_tokenizer(vocab_path)
    shared = encoder_options(checkpoint, len(tokenizer))
    try:
        config = CONFIG_BUILDERS[architecture](checkpoint, shared)
    except (ValueError, TypeError) as err:
        if isinstance(err, UserError):
            raise
        raise ConversionError(
            f"{checkpoint.path}: options give an invalid {architecture} config: {err}"
        ) from err
    model = MODEL_CLASSES[type(config)](config)
    weights, notes = mapped_state_dict(checkpoint, model.state_dict())
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
        "vocabulary_file": Path(vocab_path).name,
        "vocabulary_sha256": sha256_file(Path(vocab_path)),
        "notes": notes,
        "options": checkpoint.options,
    }
    return Conversion(model, tokenizer, architecture, reason, json.loads(json.dumps(provenance, default=str)))


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
