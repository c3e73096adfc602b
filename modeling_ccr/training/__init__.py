"""Training runs: the run configuration, the experiment, the Trainer, tracking, ablation grids."""
