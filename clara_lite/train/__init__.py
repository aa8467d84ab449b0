"""Training: the run folder and its record, trusted checkpoints, the step loop, the recipe."""
