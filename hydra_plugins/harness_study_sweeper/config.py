"""Config of ``hydra/sweeper=study``; importing this registers it with Hydra's ConfigStore.

Kept free of heavy imports: Hydra imports every plugin module at start-up,
single runs included. OmegaConf reads the annotations at runtime and knows
``typing.Optional``/``List``, not ``X | None``; hence no ``__future__`` import.
"""
# ruff: noqa: UP006, UP035, UP045

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class StudySweeperConf:
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "median"}])
    _target_: str = "hydra_plugins.harness_study_sweeper.study_sweeper.StudySweeper"
    # The sampler and pruner specs reach the sweeper as specs: it builds a fresh
    # sampler per trial (seeded) and the workers rebuild the pruner.
    _recursive_: bool = False
    # Grid axes as override values, e.g. {method: "lora,ia3", task: toy_sentiment};
    # the command line adds axes and replaces these per key.
    grid: Any = None
    # Trials per cell; a rerun resumes each study and tops it up to this, never past it.
    n_trials: int = 8
    # Seeds of the final runs of each cell's best parameters (scored on the test split).
    # `seed=0,1,2` on the command line replaces this list.
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    # Seed of every tuning trial. null = 1000, a seed no final uses: a final that
    # shared the tuning seed would repeat the winning trial's lucky draw, and that
    # optimism would enter the reported test mean. Setting it to one of `seeds`
    # is allowed (explicitly only) and is stated in the report.
    tuning_seed: Optional[int] = None
    # Optuna storage: null = sqlite:///<results_dir>/optuna.db; any RDB URL
    # (postgresql://... for clusters) or journal:<path> for shared file systems.
    storage: Optional[str] = None
    # Optuna sampler and pruner: config groups, so one is swapped whole
    # (hydra/sweeper/sampler=random, hydra/sweeper/pruner=hyperband) and tuned by
    # field (hydra.sweeper.pruner.min_resource=2). The sampler's `seed` is set per
    # trial (sampler_seed + the trial's place among the study's new trials,
    # harness/sampling.py), so a resumed study samples what an uninterrupted one
    # would have and two sweepers on one storage never draw alike. The pruner is fed each validation evaluation
    # during training; hydra/sweeper/pruner=none disables pruning.
    sampler: Any = None
    sampler_seed: int = 0
    pruner: Any = None
    # Per-method search-space overrides, merged over `search:` of the method's YAML:
    # {lora: {space: {r: {type: categorical, choices: [8, 16]}}}}
    search: Any = None
    # Trials launched at once; null = the launcher's parallelism (joblib n_jobs,
    # submitit array_parallelism), 1 for the basic launcher.
    n_jobs: Optional[int] = None
    # Workers that notice each other (RDB storages: sqlite, PostgreSQL, MySQL). Every running
    # trial's heartbeat is written every `heartbeat_interval` seconds by its sweeper and its
    # worker; a trial silent for `grace_period` seconds (both killed) is failed and queued again
    # with its own parameters, at most `max_retry` times, by the next sweeper that asks. A
    # retried trial counts once toward n_trials. Keep grace_period above a worker's start-up
    # (imports, data) plus a few intervals.
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 3


SAMPLERS = {
    "tpe": {
        "_target_": "optuna.samplers.TPESampler",
        "n_startup_trials": 4,
        "multivariate": True,
        "constant_liar": True,
    },
    "random": {"_target_": "optuna.samplers.RandomSampler"},
    "gp": {"_target_": "optuna.samplers.GPSampler", "n_startup_trials": 4},
}
PRUNERS = {
    # Two complete trials before pruning, not Optuna's five: at equal test quality it saves a third of LoRA's
    # tuning steps on the demo's cells where three saved a quarter (benchmarks/README.md, tuning_efficiency.py).
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 0},
    "percentile": {"_target_": "optuna.pruners.PercentilePruner", "percentile": 25.0, "n_startup_trials": 3},
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "reduction_factor": 3},
    "successive_halving": {"_target_": "optuna.pruners.SuccessiveHalvingPruner", "min_resource": 1},
    "threshold": {"_target_": "optuna.pruners.ThresholdPruner", "lower": None, "upper": None},
    "none": {"_target_": "optuna.pruners.NopPruner"},
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="study", node=StudySweeperConf, provider="ft-harness")
for name, node in SAMPLERS.items():
    store.store(
        group="hydra/sweeper/sampler", name=name, node=node, package="hydra.sweeper.sampler", provider="ft-harness"
    )
for name, node in PRUNERS.items():
    store.store(
        group="hydra/sweeper/pruner", name=name, node=node, package="hydra.sweeper.pruner", provider="ft-harness"
    )
