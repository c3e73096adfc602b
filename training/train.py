"""Train a matcher from a YAML run configuration.

One process:      python training/train.py configs/demo.yaml
Several (DDP):    accelerate launch --multi_gpu --num_processes 2 training/train.py configs/demo.yaml
On CPU-only machines add `--set training.use_cpu=true` (gloo backend). Negatives come from the global batch.
"""

import sys

from modeling_ccr.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
