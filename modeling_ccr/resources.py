"""Files the package ships beside its code: the published run configs and the Hub card templates.

`configs/` and `hub_cards/` live once, at the repository root. A built wheel carries them as the
packages `modeling_ccr.configs` and `modeling_ccr.hub_cards` (pyproject's `package-dir`); a source
checkout, installed editable or not, reads them where they are.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import UserError

_SOURCE_ROOT = Path(__file__).resolve().parents[1]


class ResourceError(UserError):
    """A packaged resource (run config, card template) that does not exist."""


def resource_dir(name: str) -> Path:
    """The folder of packaged resource `name` ("configs" or "hub_cards")."""
    # A folder of data files is a namespace package in the wheel: its spec knows where it lies.
    spec = importlib.util.find_spec(f"{__package__}.{name}")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    source = _SOURCE_ROOT / name
    if source.is_dir():
        return source
    raise ResourceError(
        f"the package's {name}/ folder is missing (looked in the installed package and in {source})"
    )


ABLATION_PREFIX = "ablation_"  # configs/ablation_*.yaml are `ccr ablate` grids, not run configs


def published_configs() -> dict[str, Path]:
    """Run-config name (file stem, e.g. "scan_t2i_avg_f30k") -> its YAML file."""
    paths = sorted(resource_dir("configs").glob("*.yaml"))
    return {path.stem: path for path in paths if not path.stem.startswith(ABLATION_PREFIX)}


def published_ablations() -> dict[str, Path]:
    """Ablation name (file stem, e.g. "ablation_f30k") -> its YAML file (`ccr ablate`)."""
    paths = sorted(resource_dir("configs").glob(f"{ABLATION_PREFIX}*.yaml"))
    return {path.stem: path for path in paths}


def resolve_config(name_or_path: str | Path) -> Path:
    """A run config given as a path to a YAML file, or as the name of a published config."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    configs = published_configs()
    if str(name_or_path) in configs:
        return configs[str(name_or_path)]
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise ResourceError(f"config file not found: {path}")
    raise ResourceError(
        f"no config file {str(name_or_path)!r} and no published config of that name; "
        f"`ccr configs` lists them: {', '.join(configs)}"
    )
