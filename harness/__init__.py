"""Fine-tuning method comparison harness: Hydra configs in, run records out."""

__version__ = "0.1.0"
