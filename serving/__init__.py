"""Checkpoint -> predictor runtime and the BentoML services (reads checkpoints through training.checkpoint only)."""
