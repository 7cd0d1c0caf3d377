"""The harness's Hydra sweeper: ``hydra/sweeper=study`` (grid × per-cell Optuna tuning × final seeds)."""
