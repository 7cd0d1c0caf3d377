"""Project-owned ``evaluate`` metric modules, loadable with no Hub access.

``evaluate.load("accuracy")`` fetches a script from the Hub; these modules are
loaded from this folder by path instead, through evaluate's own loader, so the
metric API (``compute``, ``add_batch``) is the familiar one.

Each module declares its direction once, ``HIGHER_IS_BETTER = True`` at module
level; a task names its metrics and takes their direction from here (it may
still state ``higher_is_better`` to override it). The declaration is read from
the module's source, so knowing a direction never imports ``evaluate`` (and
with it torch).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

METRICS_DIR = Path(__file__).resolve().parent
# Preference pairs are scored by what a model scores them by (objectives/generation.py), each named for it;
# the preference_accuracy module computes all three from score margins (and declares their direction).
PREFERENCE_METRICS = ("mean_token_logprob_accuracy", "implicit_reward_accuracy", "reward_accuracy")
MARGIN_MODULES = ("preference_accuracy",)
# Metrics the trainer computes itself on held-out data, with no module here: the objective's own loss.
TRAINER_METRICS = {"loss": False}  # name -> higher_is_better


def _modules() -> list[str]:
    return sorted(p.stem for p in METRICS_DIR.glob("*.py") if not p.stem.startswith("_"))


def available_metrics() -> list[str]:
    """Metric names a task spec may use: a module file each in this folder, and the preference quantities."""
    return sorted({*(m for m in _modules() if m not in MARGIN_MODULES), *PREFERENCE_METRICS})


@cache
def _declared_direction(module: str) -> bool | None:
    """The module's ``HIGHER_IS_BETTER``, read from its source (None when it declares none)."""
    tree = ast.parse((METRICS_DIR / f"{module}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HIGHER_IS_BETTER" for t in node.targets):
            return bool(ast.literal_eval(node.value))
    return None


def higher_is_better(name: str) -> bool | None:
    """The direction a metric's module declares; None for a name no module computes."""
    if name in TRAINER_METRICS:
        return TRAINER_METRICS[name]
    if name in PREFERENCE_METRICS:
        return _declared_direction(MARGIN_MODULES[0])
    return _declared_direction(name) if name in _modules() and name not in MARGIN_MODULES else None


def metric_entry(metric: Any) -> dict[str, Any]:
    """``{name, higher_is_better}`` for a metric a task names (a name, or a mapping that may state the direction);
    the direction is the module's unless stated. A name no module computes keeps no direction (validation says so)."""
    if isinstance(metric, str):
        name, stated = metric, None
    else:
        name, stated = metric.get("name"), metric.get("higher_is_better")
    direction = higher_is_better(name) if stated is None and isinstance(name, str) else stated
    return {"name": name} if direction is None else {"name": name, "higher_is_better": bool(direction)}


@cache
def load_metric(name: str):
    """The metric module as an ``evaluate.EvaluationModule``."""
    import evaluate

    if name not in _modules():
        raise ValueError(f"metric module {name!r} unknown; allowed: {', '.join(_modules())}")
    return evaluate.load(str(METRICS_DIR / f"{name}.py"))
