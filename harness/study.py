"""Tuning inside one grid cell: its Optuna study, the trial reporter, its summary.

``harness.sweep`` crosses the grid and launches jobs (the Hydra plugin only
adapts Hydra's interface to it). Everything here is plain Optuna and
plain records, so a worker process (joblib, SLURM) can rebuild what it needs
from its own config: the storage URL, the study name and the trial id.

A cell's study name is readable (``method=lora,task=sst2``) plus a hash of
everything else that defines the experiment, so changing a fixed setting
starts a new study instead of resuming one with different rules.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from harness import records
from harness.config import ConfigError, primary_metric
from harness.storage import SURPLUS, Liveness, counted_trials, logical_number, open_storage, retried_number


def instantiate_component(spec: Any, key: str, **extra: Any):
    """A sampler or pruner from its ``_target_`` spec (Hydra instantiate); ``extra`` only where accepted."""
    from hydra.utils import get_class, instantiate

    if spec is None:
        return None
    target = spec.get("_target_") if isinstance(spec, dict | DictConfig) else None
    try:
        accepted = inspect.signature(get_class(target)).parameters
    except Exception:  # noqa: BLE001 - reported below with the key
        raise ConfigError(f"{key}._target_", f"cannot import {target!r}; use e.g. optuna.samplers.TPESampler") from None
    given = {k: v for k, v in extra.items() if k in accepted and k not in spec}
    try:
        return instantiate(spec, **given)
    except Exception as error:  # noqa: BLE001
        raise ConfigError(key, str(error).splitlines()[0]) from None


def direction(cfg: DictConfig) -> str:
    return "maximize" if primary_metric(cfg)["higher_is_better"] else "minimize"


GROUP_AXES = ("model", "task", "method", "budget")


def cell_coordinates(cell_cfg: DictConfig, swept: dict[str, str]) -> dict[str, str]:
    """Where a cell sits in the grid: the four group choices, then any other swept key."""
    coordinates = {group: str(cell_cfg[group].name) for group in GROUP_AXES}
    return {**coordinates, **{k: v for k, v in swept.items() if k not in GROUP_AXES}}


def study_name(
    cell_cfg: DictConfig, coordinates: dict[str, str], tuned_keys: list[str], tuning: dict[str, Any] | None = None
) -> str:
    """``model/task/method/budget[,key=value]#hash``: readable, and new when any fixed setting changes.

    ``tuning`` holds what else the trials share (their seed, the data's content hash): a study resumed
    under another tuning seed or on changed data is another study, not a top-up of the old one.
    """
    identity = records.identity_config(cell_cfg)
    for key in ("seed", "role", "tuning"):
        identity.pop(key, None)
    for key in tuned_keys:
        identity.get("method", {}).pop(key, None)
    canonical = json.dumps({"config": identity, "tuning": tuning or {}}, sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    readable = "/".join(coordinates[g] for g in GROUP_AXES)
    extra = "".join(f",{k}={v}" for k, v in coordinates.items() if k not in GROUP_AXES)
    return f"{readable}{extra}#{digest}"


def file_stem(name: str) -> str:
    """A study name as a file or folder name: ``/`` and ``#`` (and anything unusual) become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", name)


def summary_path(results_dir: str | Path, name: str) -> Path:
    return Path(results_dir) / "studies" / (file_stem(name) + ".json")


def trial_reporter(cfg: DictConfig):
    """The reporter for a trial job, attached to its trial in the shared storage."""
    import optuna

    from harness.budget import TrialReporter

    tuning = cfg.tuning
    pruner = instantiate_component(tuning.get("pruner"), "hydra.sweeper.pruner")
    liveness = Liveness(interval=int(tuning.get("heartbeat_interval") or Liveness.interval))
    study = optuna.load_study(study_name=tuning.study, storage=open_storage(tuning.storage, liveness), pruner=pruner)
    return TrialReporter(optuna.trial.Trial(study, int(tuning.trial_id)), primary_metric(cfg)["name"])


def tuning_cost(trial_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Compute summed over a cell's trials, pruned and failed ones included: the price of the tuning."""

    def total(section: str, key: str) -> float:
        return sum((r.get(section) or {}).get(key) or 0 for r in trial_records)

    return {
        "trials_recorded": len(trial_records),
        "train_seconds": total("time", "train_seconds"),
        "eval_seconds": total("time", "eval_seconds"),
        "train_tokens": int(total("compute", "train_tokens")),
        "steps": int(total("compute", "steps")),
        "train_peak_memory_bytes_max": max(
            ((r.get("memory") or {}).get("train_peak_bytes") or 0 for r in trial_records), default=0
        ),
    }


def cell_summary(
    study, cell: dict[str, Any], space: dict[str, Any], finals: list[dict[str, Any]], results_dir, seeds: dict[str, Any]
) -> dict:
    """What a cell's tuning did and cost, from the study and the trials' records (a pure function of both).

    ``seeds`` says which seed the trials ran on and which seeds the finals were
    scored on, so a reader can check that no reported score took part in the selection.
    """
    from optuna.trial import TrialState

    attempts = study.get_trials(deepcopy=False)
    trials = counted_trials(attempts)
    run_ids = dict.fromkeys(t.user_attrs["run_id"] for t in attempts if t.user_attrs.get("run_id"))  # a retry: one run
    trial_records = [
        r for rid in run_ids if (r := records.read_record(records.record_path(results_dir, rid))) is not None
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return {
        "study": study.study_name,
        "cell": cell,
        "direction": study.direction.name.lower(),
        "search": space,
        **seeds,
        "trials": len(trials),
        "states": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        # Attempts in the storage: a trial whose worker died is failed and queued again with its parameters.
        "attempts": len(attempts),
        "retries": sum(retried_number(t) is not None for t in attempts),
        "surplus": sum(bool(t.user_attrs.get(SURPLUS)) for t in attempts),
        "pruned_trials": [logical_number(t) for t in trials if t.state == TrialState.PRUNED],
        "best": None
        if best is None
        else {"trial": logical_number(best), "value": best.value, "params": best.params, **best.user_attrs},
        "tuning_cost": tuning_cost(trial_records),
        "finals": [
            {"run_id": f.get("run_id"), "seed": f.get("seed"), "status": f.get("status"), "test": _test_value(f)}
            for f in finals
        ],
    }


def _test_value(record: dict[str, Any]) -> float | None:
    return (record.get("primary_metric") or {}).get("test")


def write_summary(results_dir: str | Path, summary: dict[str, Any]) -> Path:
    path = summary_path(results_dir, summary["study"])
    records.write_record(path, summary)
    return path
