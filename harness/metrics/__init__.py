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
# Preference pairs are scored by what a model scores them by (objectives/generation.py), each named for it;
# the preference_accuracy module computes all three from score margins.
PREFERENCE_METRICS = ("mean_token_logprob_accuracy", "implicit_reward_accuracy", "reward_accuracy")
MARGIN_MODULES = ("preference_accuracy",)


def _modules() -> list[str]:
    return sorted(p.stem for p in METRICS_DIR.glob("*.py") if not p.stem.startswith("_"))


def available_metrics() -> list[str]:
    """Metric names a task spec may use: a module file each in this folder, and the preference quantities."""
    return sorted({*(m for m in _modules() if m not in MARGIN_MODULES), *PREFERENCE_METRICS})


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    if name not in _modules():
        raise ValueError(f"metric module {name!r} unknown; allowed: {', '.join(_modules())}")
    return evaluate.load(str(METRICS_DIR / f"{name}.py"))
