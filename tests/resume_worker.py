"""`ccr train` in a process a test can kill with SIGKILL at a chosen point (tests/test_resume.py).

usage: python tests/resume_worker.py KILL_AT ccr-train-arguments...
KILL_AT: "none"; "checkpoint:N" (SIGKILL while checkpoint-N is being written: after its weights and
optimizer, before its RNG and trainer state); "final-save" (SIGKILL halfway through writing the final
model's weights). The kill is a real SIGKILL of this process: nothing in it runs after.
"""

import os
import signal
import sys
from pathlib import Path

from modeling_ccr.cli import main
from modeling_ccr.training.trainer import MatchingTrainer


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_during_checkpoint(step: int) -> None:
    original = MatchingTrainer._save_rng_state

    def save_rng_state(self, output_dir):
        if self.state.global_step == step:
            die()
        original(self, output_dir)

    MatchingTrainer._save_rng_state = save_rng_state


def kill_during_final_save() -> None:
    original = MatchingTrainer.save_model

    def save_model(self, output_dir=None, _internal_call=False):
        original(self, output_dir, _internal_call)
        if output_dir is not None and Path(output_dir).name == "model.partial":
            weights = Path(output_dir) / "model.safetensors"
            data = weights.read_bytes()
            weights.write_bytes(data[: len(data) // 2])  # as if the write were cut off halfway
            die()

    MatchingTrainer.save_model = save_model


if __name__ == "__main__":
    kill_at, arguments = sys.argv[1], sys.argv[2:]
    if kill_at.startswith("checkpoint:"):
        kill_during_checkpoint(int(kill_at.split(":")[1]))
    elif kill_at == "final-save":
        kill_during_final_save()
    sys.exit(main(arguments))
