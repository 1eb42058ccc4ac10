"""Training for RGANCS: data sets with simulated k-space, losses, the training loop, the CLI."""
