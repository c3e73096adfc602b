"""DDP with two real CPU processes: negatives come from the global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_two_processes_of_batch_b_give_the_loss_and_gradient_of_one_process_of_2b(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    output = tmp_path / "ddp.json"
    # `--cpu --num_processes 2` would silently start one process; --multi_gpu on CPU starts two (gloo).
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29533"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, str(WORKER), str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(output.read_text())
    assert measured["world_size"] == 2
    assert measured["ddp_loss"] == pytest.approx(measured["single_loss"], rel=1e-5)
    assert measured["max_grad_error"] <= 1e-5 * max(1.0, measured["max_grad"])
    assert measured["max_local_logits_error"] <= 1e-5  # logits_per_image is the local block
    # Without gathering, each process sees only its own negatives: a different (smaller) loss.
    assert measured["per_process_negatives_loss"] < measured["single_loss"] - 1e-3
