"""Training: the loop, its setup, checkpoints, optimizer, losses, preemption."""
