"""Training, checkpoints and inference."""
