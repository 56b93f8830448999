"""Training models on releases (docs/training.md): recipes, the training job, its API."""
