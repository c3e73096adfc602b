"""The launch folder `training/`: Accelerate recipes that Accelerate itself can read, and that train."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "training"
TRAIN = TRAINING / "train.py"

# recipe: (num_processes, num_machines, distributed_type)
RECIPES = {
    "one_gpu.yaml": (1, 1, DistributedType.NO),
    "multi_gpu.yaml": (8, 1, DistributedType.MULTI_GPU),
    "multi_node.yaml": (16, 2, DistributedType.MULTI_GPU),
    # MULTI_GPU, not MULTI_CPU: accelerate 1.15 starts one process for MULTI_CPU without mpirun.
    "cpu_ddp.yaml": (2, 1, DistributedType.MULTI_GPU),
}

# The smoke-test sizes of .ci/run: a demo run that trains in seconds.
TINY = [
    "data.synthetic.train_images=64",
    "data.synthetic.validation_images=16",
    "data.synthetic.test_images=16",
    "data.min_word_count=1",
    "model.embed_dim=16",
    "model.word_dim=8",
    "training.num_train_epochs=1",
    "training.per_device_train_batch_size=16",
    "training.use_cpu=true",
]


def overrides(output_dir: Path) -> list[str]:
    return [arg for key in [*TINY, f"output_dir={output_dir}"] for arg in ("--set", key)]


def world_size(output_dir: Path) -> int:
    """The world size the run recorded in its run_info.json."""
    (run_info,) = output_dir.rglob("run_info.json")
    return json.loads(run_info.read_text())["world_size"]


def test_training_is_a_launch_folder_not_a_package():
    assert not (TRAINING / "__init__.py").exists()
    assert set(RECIPES) == {p.name for p in TRAINING.glob("*.yaml")}
    assert TRAIN.is_file() and (TRAINING / "slurm_multi_node.sbatch").is_file()


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_parses_with_accelerates_loader(recipe):
    config = load_config_from_file(str(TRAINING / recipe))
    assert isinstance(config, ClusterConfig)
    num_processes, num_machines, distributed_type = RECIPES[recipe]
    assert config.distributed_type == distributed_type
    assert config.num_processes == num_processes
    assert config.num_machines == num_machines
    assert config.machine_rank == 0
    assert config.use_cpu == (recipe == "cpu_ddp.yaml")


def test_multi_node_recipe_leaves_rank_and_address_to_the_slurm_script():
    config = load_config_from_file(str(TRAINING / "multi_node.yaml"))
    assert config.main_process_ip and config.main_process_port
    script = (TRAINING / "slurm_multi_node.sbatch").read_text()
    for flag in ("--machine_rank", "--main_process_ip", "--num_machines", "--num_processes"):
        assert flag in script
    assert "--config_file training/multi_node.yaml" in script
    assert "$SLURM_NODEID" in script and "$SLURM_NNODES" in script
    subprocess.run(["bash", "-n", str(TRAINING / "slurm_multi_node.sbatch")], check=True)


def test_readme_names_every_recipe_and_the_cpu_override():
    readme = (TRAINING / "README.md").read_text()
    for name in [*RECIPES, "slurm_multi_node.sbatch", "training.use_cpu=true"]:
        assert name in readme


def train_and_check_saved(command: list[str], output: Path) -> None:
    """Run a training command from the repository root; it must exit 0 and save the model's weights."""
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_python_training_train_py_trains_and_saves(tmp_path):
    output = tmp_path / "run"
    train_and_check_saved([sys.executable, str(TRAIN), "demo", *overrides(output)], output)
    assert world_size(output) == 1


@pytest.mark.slow
def test_cpu_ddp_recipe_trains_with_two_processes(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    output = tmp_path / "run"
    command = [accelerate, "launch", "--config_file", str(TRAINING / "cpu_ddp.yaml")]
    launch = [*command, "--main_process_port", "29537", str(TRAIN), "demo", *overrides(output)]
    train_and_check_saved(launch, output)
    assert world_size(output) == 2  # two workers really trained (MULTI_CPU would have started one)


@pytest.mark.slow
def test_the_built_wheel_installs_no_top_level_training_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("modeling_ccr-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert archive.read(top_level).decode().split() == ["modeling_ccr"]
    assert not any(name.startswith("training/") for name in names)
    assert "modeling_ccr/training/__init__.py" in names  # the library's own training package stays
