"""Training: configs, the trainer loop, checkpoints, metrics, plots."""
