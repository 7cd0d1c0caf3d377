"""Hydra's config tree; installed as the package ``harness_conf`` (see pyproject.toml and harness/paths.py)."""
