"""Which weights a result was measured with: the sha256 of `model.safetensors`, recorded and checked.

`ccr train` records the hash in `run_info.json` and in every results file it writes (`weights`:
{model folder: {sha256, bytes}}); `ccr evaluate` says when a folder's weights differ from the ones it
was trained with, and never overwrites a results file measured with other weights; `ccr push` refuses
weights that are truncated or that differ from those its results were measured with.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from ..errors import UserError

WEIGHTS_FILE = "model.safetensors"
_HASH_BLOCK = 1 << 20
# A safetensors file starts with the byte length of its JSON header, a little-endian u64.
_HEADER_LENGTH = struct.Struct("<Q")
_MAX_HEADER_BYTES = 100 << 20  # the safetensors reader's own limit


class WeightsIntegrityError(UserError, ValueError):
    """Weights that are corrupt, or differ from the weights a result was measured with."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def weights_record(model_dir: str | Path) -> dict[str, Any]:
    """`{"sha256": ..., "bytes": ...}` of a model folder's `model.safetensors`."""
    path = Path(model_dir) / WEIGHTS_FILE
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a safetensors file's layout (truncated, bad header), or None if it is whole.

    Reads only the header: the tensors' byte ranges must tile the data section up to the file's end.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < _HEADER_LENGTH.size:
        return f"it is {size} bytes, too short for a safetensors header (truncated?)"
    with open(path, "rb") as handle:
        (header_bytes,) = _HEADER_LENGTH.unpack(handle.read(_HEADER_LENGTH.size))
        if header_bytes > min(_MAX_HEADER_BYTES, size - _HEADER_LENGTH.size):
            return (
                f"its header claims {header_bytes} bytes but the file has {size} bytes "
                "(truncated, or not a safetensors file)"
            )
        raw = handle.read(header_bytes)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return "its header is not valid JSON (not a safetensors file, or corrupted)"
    if not isinstance(header, dict):
        return "its header is not a JSON object (not a safetensors file)"
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"tensor {name!r} has no valid data_offsets in the header"
        ends.append(offsets[1])
    data_bytes = size - _HEADER_LENGTH.size - header_bytes
    expected = max(ends, default=0)
    if data_bytes != expected:
        state = "truncated" if data_bytes < expected else "longer than its header describes"
        return f"it is {state}: {data_bytes} bytes of tensor data, its header describes {expected}"
    return None


def recorded_weights(model_dir: str | Path) -> dict[str, Any] | None:
    """The weights record `ccr train` left in `run_info.json` (None for folders without one)."""
    path = Path(model_dir) / "run_info.json"
    try:
        record = json.loads(path.read_text()).get("weights")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) and "sha256" in record else None


def weights_changed(model_dir: str | Path) -> str | None:
    """A sentence saying how a folder's weights differ from those it was trained with, or None."""
    recorded = recorded_weights(model_dir)
    if recorded is None:
        return None
    current = sha256_file(Path(model_dir) / WEIGHTS_FILE)
    if current == recorded["sha256"]:
        return None
    return (
        f"{Path(model_dir) / WEIGHTS_FILE} has changed since training (sha256 {recorded['sha256'][:12]} "
        f"recorded in run_info.json, now {current[:12]})"
    )


def results_weights(record: dict[str, Any]) -> dict[str, str]:
    """{model folder: sha256} of the weights a results record was measured with ({} for older records)."""
    weights = record.get("weights") if isinstance(record, dict) else None
    if not isinstance(weights, dict):
        return {}
    return {
        str(model): entry["sha256"]
        for model, entry in weights.items()
        if isinstance(entry, dict) and "sha256" in entry
    }


def check_can_overwrite_results(path: str | Path, shas: list[str]) -> None:
    """Refuse to replace a results file measured with other weights than `shas` (the sha256 of each
    model's weights, in the order of its models; compared by position, so a moved folder still matches)."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        return  # an unreadable results file holds no result worth keeping
    measured = results_weights(record)
    models = record.get("models") if isinstance(record, dict) else None
    if not isinstance(models, list) or len(models) != len(shas):
        return
    for model, sha in zip(models, shas, strict=True):
        old = measured.get(str(model))
        if old is not None and old != sha:
            raise WeightsIntegrityError(
                f"{path} holds results measured with other weights of {model} (sha256 {old[:12]}, now "
                f"{sha[:12]}); not overwriting them: pass --output to write these results elsewhere"
            )
