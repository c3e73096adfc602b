"""Load a saved matcher and its tokenizer, turning every way a folder can be wrong into one `ModelLoadError`."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ModelLoadError, first_line
from ..models.modeling_matcher import GalleryScoring
from .integrity import safetensors_problem, sha256_file

# Files `ccr train` writes into every model folder; their absence means "not a model folder".
MODEL_FILES = ("config.json", "model.safetensors")
# The tokenizer files `save_pretrained` writes; tokenizer.json holds the whole fast tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_folder(path: str | Path) -> Path:
    """`path` as a Path if it is a model folder; a ModelLoadError naming what is missing otherwise."""
    folder = Path(path)
    if not folder.exists():
        raise ModelLoadError(f"no model folder at {folder} (expected a folder written by `ccr train`)")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file; expected a model folder written by `ccr train`")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"{folder} is not a model folder: it has no {' or '.join(missing)}")
    return folder


def _json_problem(path: Path) -> str | None:
    """Why a JSON file cannot be read as a JSON object, or None."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        return f"not UTF-8 text (byte {err.start}); the file is corrupt"
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); truncated or corrupt?"
    if not isinstance(value, dict):
        return f"expected a JSON object, found a JSON {type(value).__name__}"
    return None


def diagnose_model_files(folder: Path) -> None:
    """One ModelLoadError naming the file and what is wrong with it, before transformers reads any of them.

    Checks config.json (a JSON object with a model_type), model.safetensors (its header and length: a
    truncated copy is caught here) and the tokenizer files (present, JSON objects).
    """
    config = folder / "config.json"
    problem = _json_problem(config)
    if problem is None and not isinstance(json.loads(config.read_text()).get("model_type"), str):
        problem = "it has no model_type (not the config of a model folder)"
    if problem:
        raise ModelLoadError(f"{config} cannot be loaded: {problem}")
    weights = folder / "model.safetensors"
    problem = safetensors_problem(weights)
    if problem:
        raise ModelLoadError(f"{weights} cannot be loaded: {problem}")
    for name in TOKENIZER_FILES:
        path = folder / name
        if not path.is_file():
            raise ModelLoadError(
                f"{path} is missing: the model folder has no complete tokenizer (copy the training run's "
                f"model folder again)"
            )
        problem = _json_problem(path)
        if problem:
            raise ModelLoadError(f"{path} cannot be loaded: {problem}")


def load_matcher(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer of a model folder, in eval mode.

    Raises ModelLoadError (one line: the folder or file and what is wrong) for a missing folder, missing,
    truncated or corrupt files (`diagnose_model_files`), files transformers cannot read, or a model that
    is not one of this package's matchers.
    """
    folder = check_model_folder(path)
    diagnose_model_files(folder)
    try:
        model = AutoModel.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        raise ModelLoadError(f"{folder}: the model cannot be loaded: {first_line(err)}") from err
    if not isinstance(model, GalleryScoring):
        raise ModelLoadError(
            f"{folder}: holds a {type(model).__name__}, not an image-text matcher of this package"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    # `Exception` itself: the Rust tokenizers library reports a malformed tokenizer.json as a bare
    # Exception ("expected `,` or `}` at line 2 column 12"), not as one of its subclasses.
    except Exception as err:
        raise ModelLoadError(f"{folder}: the tokenizer cannot be loaded: {first_line(err)}") from err
    return model.eval(), tokenizer


class FolderMismatchError(ModelLoadError):
    """A model folder whose tokenizer, config and weights come from different models."""


def folder_mismatch(
    folder: str | Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> str | None:
    """Why a loaded folder's tokenizer, config and weights do not belong together (one line), or None.

    - the tokenizer files must be those `ccr train` recorded (sha256 in `run_info.json`, `tokenizer`);
    - every (member) config's `vocab_size` must be the tokenizer's size, so every id has its embedding
      row and no row is another word's (the weights' shapes are checked against config.json on loading);
    - the config's `<pad>`, `<start>`, `<end>` ids (pad/bos/eos_token_id) must be the tokenizer's.
    """
    folder = Path(folder)
    recorded = _recorded_tokenizer(folder)
    for name, sha in recorded.items():
        path = folder / name
        current = sha256_file(path) if path.is_file() else None
        if current != sha:
            now = f"now {current[:12]}" if current else "now missing"
            return (
                f"{path} is not the tokenizer this model was trained with (sha256 {sha[:12]} recorded in "
                f"{folder / 'run_info.json'}, {now}): copy the training run's model folder again"
            )
    members = getattr(model, "members", None) or [model]
    for index, member in enumerate(members):
        config = member.config
        which = "config.json" if len(members) == 1 else f"config.json (member {index})"
        vocab_size = getattr(config, "vocab_size", None)
        if isinstance(vocab_size, int) and vocab_size != len(tokenizer):
            return (
                f"{folder}: tokenizer.json and {which} belong to different models: the tokenizer has "
                f"{len(tokenizer)} tokens, {which} a vocab_size of {vocab_size}"
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            expected, found = getattr(config, name, None), getattr(tokenizer, name, None)
            if expected is not None and found is not None and expected != found:
                return (
                    f"{folder}: tokenizer.json and {which} belong to different models: {name} is {expected} "
                    f"in {which}, {found} in the tokenizer"
                )
    return None


def _recorded_tokenizer(folder: Path) -> dict[str, str]:
    """{file: sha256} of the tokenizer files `ccr train` recorded in run_info.json ({} without a record)."""
    try:
        record = json.loads((folder / "run_info.json").read_text()).get("tokenizer")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {name: sha for name, sha in record.items() if isinstance(name, str) and isinstance(sha, str)}


def load_matching_folder(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`load_matcher`, then FolderMismatchError (one line, naming the files) when the folder's tokenizer,
    config and weights do not belong together (`folder_mismatch`)."""
    model, tokenizer = load_matcher(path)
    problem = folder_mismatch(path, model, tokenizer)
    if problem:
        raise FolderMismatchError(problem)
    return model, tokenizer
