"""Train a matcher from a YAML run configuration: `ccr train` behind `accelerate launch`.

CONFIG is a published config name (`ccr configs` lists them) or a path; `--set key=value` overrides keys.
Run it from the repository root with one of the launch recipes in this folder (see training/README.md):

One process:       python training/train.py demo
One GPU:           accelerate launch --config_file training/one_gpu.yaml training/train.py demo
GPUs of one node:  accelerate launch --config_file training/multi_gpu.yaml --num_processes 4 training/train.py demo
Two CPU processes: accelerate launch --config_file training/cpu_ddp.yaml training/train.py demo \
                       --set training.use_cpu=true
Several nodes:     sbatch training/slurm_multi_node.sbatch CONFIG  (uses training/multi_node.yaml)

On CPU-only machines add `--set training.use_cpu=true` (gloo backend). Negatives come from the global batch.
This folder is not a Python package: the wheel installs only `modeling_ccr`.
"""

import sys

from modeling_ccr.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
