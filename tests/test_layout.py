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


# The library's layers, bottom to top (docs/architecture.md): a module may import its own layer and the
# layers below it, never one above. The package root's __init__ re-exports models/ and is not a layer.
LAYERS = [
    ("ground", {"_version", "errors", "resources"}),
    ("models", {"models"}),
    ("text", {"text"}),
    ("metrics", {"metrics"}),
    ("data", {"data"}),
    ("vision", {"vision"}),
    ("artifacts", {"artifacts"}),
    ("evaluation", {"evaluation"}),
    ("hub", {"hub"}),
    ("training", {"training"}),
    ("apps", {"apps"}),
    ("cli", {"cli"}),
]
LAYER_OF = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}


def module_name(path: Path, package_root: Path) -> list[str]:
    """`modeling_ccr/data/formats/karpathy.py` -> ["data", "formats", "karpathy"] (relative to the package)."""
    parts = list(path.relative_to(package_root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def layer_violations(path: Path, package_root: Path) -> list[str]:
    """Imports of `path` (a file under package_root) that reach a layer above its own."""
    parts = module_name(path, package_root)
    if not parts:
        return []
    own = LAYER_OF[parts[0]]
    package = parts if path.name == "__init__.py" else parts[:-1]
    bad = []
    for line, module, level in imports_of(path):
        if level == 0:
            if module.split(".")[0] != "modeling_ccr":
                continue
            target = module.split(".")[1:]
        else:
            target = package[: len(package) - (level - 1)] + (module.split(".") if module else [])
        if not target:
            bad.append(f"{path.name}:{line} imports the package root (it loads every model)")
        elif LAYER_OF.get(target[0], -1) > own:
            bad.append(
                f"{'/'.join(parts)}:{line} ({LAYERS[own][0]}) imports {'.'.join(target)} ({target[0]})"
            )
    return bad


LIBRARY_FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py")


def test_every_package_file_belongs_to_a_layer():
    tops = {module_name(p, PACKAGE)[0] for p in LIBRARY_FILES}
    assert tops <= set(LAYER_OF), tops - set(LAYER_OF)


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_imports_point_down(path):
    assert layer_violations(path, PACKAGE) == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    package = tmp_path / "modeling_ccr"
    (package / "data").mkdir(parents=True)
    planted = package / "data" / "rogue.py"
    planted.write_text(
        "from ..training.experiment import run_experiment\n"
        "import modeling_ccr.apps.gradio_app\n"
        "from ..metrics.attention import box_iou\n"
        "from .. import BACKBONES\n"
    )
    problems = layer_violations(planted, package)
    assert len(problems) == 3, problems
    assert "training.experiment" in problems[0]


def test_nothing_outside_training_and_cli_imports_training():
    importers = {
        module_name(p, PACKAGE)[0]
        for p in LIBRARY_FILES
        for _, module, level in imports_of(p)
        if "training" in module.split(".") and (level > 0 or module.startswith("modeling_ccr"))
    }
    assert importers <= {"training", "cli"}, importers


def test_the_package_root_holds_at_most_six_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 6, modules
