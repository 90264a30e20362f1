"""Training: config, data crops, the LMDM objective, the loop with checkpoints and resume."""
