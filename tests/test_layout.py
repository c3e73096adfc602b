"""The package layout: checkpoint code in `modeling_ccr/models/` imports only its siblings."""

import ast
from pathlib import Path

import pytest

import modeling_ccr

PACKAGE = Path(modeling_ccr.__file__).parent
MODELS = PACKAGE / "models"


def imports_of(path: Path) -> list[tuple[int, str, int]]:
    """(line, module, level) of every import statement in a file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


def outward_imports(path: Path) -> list[str]:
    """Imports in a models/ file that reach outside models/: the package itself, or a parent package."""
    siblings = {p.stem for p in MODELS.glob("*.py")}
    bad = []
    for line, module, level in imports_of(path):
        if level == 0 and module.split(".")[0] == "modeling_ccr":
            bad.append(f"{path.name}:{line} imports {module}")
        elif level > 1:
            bad.append(f"{path.name}:{line} imports {'.' * level}{module} (a parent package)")
        elif level == 1 and module and module.split(".")[0] not in siblings:
            bad.append(f"{path.name}:{line} imports .{module}, which is not a file of models/")
    return bad


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.py")), ids=lambda p: p.name)
def test_checkpoint_code_imports_only_its_siblings(path):
    assert outward_imports(path) == []


def test_the_import_check_catches_an_upward_import(tmp_path):
    rogue = tmp_path / "modeling_rogue.py"
    rogue.write_text(
        "from ..data.schema import corpus_features\nimport modeling_ccr.evaluation.gallery\nfrom .nowhere import x\n"
    )
    problems = outward_imports(rogue)
    assert len(problems) == 3, problems


def test_library_modules_are_not_inside_the_checkpoint_folder():
    library = {
        "evaluation",
        "trainer",
        "experiment",
        "hub",
        "cards",
        "visualization",
        "cli",
        "data",
        "metrics",
    }
    assert not library & {p.stem for p in MODELS.iterdir()}


def test_public_names_stay_importable_from_the_package():
    from modeling_ccr import BACKBONES, EnsembleModel, MatcherOutput, ScanConfig, ScanModel  # noqa: F401

    assert {"scan", "bfan", "sgr", "saf", "vsepp", "dvsa", "damsm", "ensemble"} <= set(BACKBONES)
