"""Project-owned ``evaluate`` metric modules, loadable with no Hub access.

``evaluate.load("accuracy")`` fetches a script from the Hub; these modules are
loaded from this folder by path instead, through evaluate's own loader, so the
metric API (``compute``, ``add_batch``) is the familiar one.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent


def available_metrics() -> list[str]:
    """Metric names a task spec may use: one module file each in this folder."""
    return sorted(p.stem for p in METRICS_DIR.glob("*.py") if not p.stem.startswith("_"))


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    if name not in available_metrics():
        raise ValueError(f"metric {name!r} unknown; allowed: {', '.join(available_metrics())}")
    return evaluate.load(str(METRICS_DIR / f"{name}.py"))
