"""Load a saved matcher and its tokenizer, turning every way a folder can be wrong into one `ModelLoadError`."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import ModelLoadError
from .models.modeling_matcher import GalleryScoring

# Files `ccr train` writes into every model folder; their absence means "not a model folder".
MODEL_FILES = ("config.json", "model.safetensors")


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


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


def load_matcher(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer of a model folder, in eval mode.

    Raises ModelLoadError (one line: the folder and what is wrong) for a missing folder, missing files,
    files transformers cannot read, or a model that is not one of this package's matchers.
    """
    folder = check_model_folder(path)
    try:
        model = AutoModel.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"{folder}: the model cannot be loaded: {_first_line(err)}") from err
    if not isinstance(model, GalleryScoring):
        raise ModelLoadError(
            f"{folder}: holds a {type(model).__name__}, not an image-text matcher of this package"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"{folder}: the tokenizer cannot be loaded: {_first_line(err)}") from err
    return model.eval(), tokenizer
