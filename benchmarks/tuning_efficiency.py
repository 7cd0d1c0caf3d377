"""Per-cell Optuna against an exhaustive grid over the same space: trials needed, compute the pruner saves.

Two phases.

1. **Grid** (real runs): every point of an lr x rank grid spanning the
   method's search space (``conf/method/<m>.yaml``: lora lr x r, ia3 lr) is
   trained once on the tuning seed, as a tuning trial would be, with its
   validation curve (every ``eval_steps``) and, for the comparison at equal
   final quality, its test score. Records are kept under ``--results`` and a
   re-run reuses them (the harness skips a run whose record exists).
2. **Optuna on the grid** (tabular, as HPO benchmarks such as HPOBench do):
   the project's default sampler and pruner (``hydra/sweeper=study``'s
   ``tpe`` and ``median`` groups, seeded per trial as the sweeper seeds them)
   run ``--repeats`` studies over the method's own search space; each
   sampled lr is snapped to the nearest grid value on a log scale, and the
   trial's validation curve and score are the grid run's. Without the
   pruner, a trial costs all its steps; with it, the steps up to where it was
   pruned.

It prints, per method: the grid's best validation score; over the repeats,
the trials Optuna needed to come within ``--tolerance`` (1 point) of it
(median, and the share of repeats that did so within a third of the grid's
size); and, at ``n_trials`` = a third of the grid, the training steps spent
with and without the pruner and the test score of the configuration each
picked.

    python benchmarks/tuning_efficiency.py --results /tmp/tuning_grid            # run the grid, then simulate
    python benchmarks/tuning_efficiency.py --results /tmp/tuning_grid --repeats 200
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

GRIDS = {
    "lora": {"lr": np.geomspace(1e-4, 1e-2, 6).tolist(), "r": [4, 8, 16, 32]},
    "ia3": {"lr": np.geomspace(1e-3, 3e-2, 8).tolist()},
}
DERIVED = {"lora": lambda point: {"lora_alpha": 2 * point["r"]}}  # conf/method/lora.yaml: alpha = 2r


def grid_points(method: str) -> list[dict[str, Any]]:
    axes = GRIDS[method]
    points = [{}]
    for name, values in axes.items():
        points = [{**p, name: v} for p in points for v in values]
    return points


def run_grid(method: str, results: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """Each grid point trained once on the tuning seed; its validation curve and test score."""
    from hydra import compose, initialize_config_dir

    from harness.cli import CONFIG_DIR, run_one

    table = []
    for point in grid_points(method):
        assignments = {**point, **DERIVED.get(method, lambda p: {})(point)}
        settings = [f"method.{k}={v}" for k, v in assignments.items()]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = compose(
                config_name="config",
                overrides=[f"method={method}", f"results_dir={results}", "seed=1000", *overrides, *settings],
            )
        record = run_one(cfg)
        metric = record["primary_metric"]["name"]
        curve = {p["step"]: p[f"eval_{metric}"] for p in record["learning_curve"] if f"eval_{metric}" in p}
        table.append(
            {
                "point": point,
                "curve": {int(k): v for k, v in curve.items() if int(k) > 0},
                "validation": record["primary_metric"]["validation"],
                "test": record["primary_metric"]["test"],
                "steps": record["compute"]["steps"],
                "train_seconds": record["compute"]["seconds"],
            }
        )
        print(f"{method} {point}: val {table[-1]['validation']:.3f} test {table[-1]['test']:.3f}", flush=True)
    return table


def nearest(table: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """The grid run closest to a sampled point: lr on a log scale, other axes exactly."""

    def distance(row: dict[str, Any]) -> float:
        point = row["point"]
        if any(point[k] != params[k] for k in point if k != "lr"):
            return math.inf
        return abs(math.log(point["lr"]) - math.log(params["lr"]))

    return min(table, key=distance)


def search_space(method: str):
    """The method's own distributions (its YAML's ``search.space``), as the sweeper builds them."""
    from omegaconf import OmegaConf

    from harness.paths import config_dir
    from harness.search import SearchSpace

    return SearchSpace(OmegaConf.load(Path(config_dir()) / "method" / f"{method}.yaml")).distributions


def simulate(table: list[dict[str, Any]], method: str, n_trials: int, seed: int, prune: bool) -> list[dict]:
    """One study as the sweeper runs it (sampler reseeded per trial); each trial's outcome read from the grid."""
    import optuna
    from hydra.utils import instantiate

    from hydra_plugins.harness_study_sweeper.config import PRUNERS, SAMPLERS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = instantiate(PRUNERS["median" if prune else "none"])
    study = optuna.create_study(direction="maximize", pruner=pruner)
    distributions, trials = search_space(method), []
    for number in range(n_trials):
        study.sampler = instantiate(SAMPLERS["tpe"], seed=seed * 1000 + number)
        trial = study.ask(distributions)
        row = nearest(table, trial.params)
        spent, pruned = row["steps"], False
        for step in sorted(row["curve"], key=int):  # JSON keys are strings
            trial.report(row["curve"][step], int(step))
            if trial.should_prune():
                spent, pruned = int(step), True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, row["validation"])
        trials.append({"row": row, "steps": spent, "pruned": pruned})
    return trials


def trials_to_reach(trials: list[dict], target: float) -> int | None:
    best = -math.inf
    for number, trial in enumerate(trials, start=1):
        if not trial["pruned"]:
            best = max(best, trial["row"]["validation"])
        if best >= target:
            return number
    return None


def picked(trials: list[dict]) -> dict[str, Any] | None:
    complete = [t["row"] for t in trials if not t["pruned"]]
    return max(complete, key=lambda row: row["validation"]) if complete else None


def report(method: str, table: list[dict[str, Any]], repeats: int, tolerance: float) -> None:
    grid_best = max(row["validation"] for row in table)
    budget = max(1, len(table) // 3)
    reach = [
        trials_to_reach(simulate(table, method, len(table), seed, prune=False), grid_best - tolerance)
        for seed in range(repeats)
    ]
    reached = [r for r in reach if r is not None]
    within = sum(r <= budget for r in reached) / repeats
    print(f"\n{method}: grid of {len(table)} points, best validation {grid_best:.3f}")
    print(
        f"  trials to come within {tolerance:.2f}: median {statistics.median(reached) if reached else 'never'}"
        f" over {repeats} studies; within {budget} trials (a third of the grid) in {within:.0%} of them"
    )
    for n_trials in sorted({budget, len(table)}):
        pruning_savings(table, method, n_trials, repeats)


def pruning_savings(table: list[dict[str, Any]], method: str, n_trials: int, repeats: int) -> None:
    """Training steps of ``n_trials``-trial studies with and without the pruner, and the test score of each pick."""
    spent: dict[bool, list[int]] = {True: [], False: []}
    tests: dict[bool, list[float]] = {True: [], False: []}
    for seed in range(repeats):
        for prune in (False, True):
            trials = simulate(table, method, n_trials, seed, prune)
            spent[prune].append(sum(t["steps"] for t in trials))
            choice = picked(trials)
            tests[prune].append(choice["test"] if choice else float("nan"))
    saved = 1 - statistics.mean(spent[True]) / statistics.mean(spent[False])
    print(
        f"  at {n_trials} trials: steps without pruning {statistics.mean(spent[False]):.0f}, with the median pruner"
        f" {statistics.mean(spent[True]):.0f} ({saved:.0%} saved); test score of the pick: without"
        f" {np.nanmean(tests[False]):.3f}, with {np.nanmean(tests[True]):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="where the grid's records go (reused)")
    parser.add_argument("--methods", nargs="+", default=sorted(GRIDS), choices=sorted(GRIDS))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument(
        "overrides",
        nargs="*",
        default=["task=toy_negation", "model=minilm", "budget=demo", "train.optimizer=adamw_torch_fused"],
        help="config overrides (default: the demo's cells)",
    )
    args = parser.parse_args()
    for method in args.methods:
        cached = args.results / f"grid_{method}.json"
        if cached.is_file():
            table = json.loads(cached.read_text())
        else:
            table = run_grid(method, args.results, args.overrides)
            cached.write_text(json.dumps(table, indent=1))
        report(method, table, args.repeats, args.tolerance)


if __name__ == "__main__":
    main()
