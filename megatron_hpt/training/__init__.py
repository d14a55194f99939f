"""Training: process groups, model/optimizer setup, the step, checkpoints, logging."""
