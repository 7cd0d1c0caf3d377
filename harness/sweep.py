"""A tuning sweep: cross the grid's cells, tune each with its own Optuna study, re-run the best over seeds.

Hydra's own Optuna sweeper runs one study for a whole sweep and cannot resume
a crashed multirun. Here every grid cell (method × task × budget × model ×
any other swept key) owns one study in a persistent storage, named after the
cell. The sweep asks Optuna for trials, launches them through a ``launch``
callable (the study sweeper wraps Hydra's launcher: basic, joblib, submitit),
tells the results back, then launches the finals. Every trial and final is an
ordinary run record (``role`` trial|final), so a rerun skips what finished,
and a trial left RUNNING by a killed sweep is relaunched with its own
parameters: the study ends with exactly ``n_trials`` trials.

Nothing here knows Hydra's launcher or override grammar, so a test drives a
whole sweep with a fake ``launch`` that returns canned records.
Run one sweep per storage at a time; the launcher parallelises within it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness import study as study_stage
from harness.compat import trial_id
from harness.config import ConfigError
from harness.search import SearchSpace, method_overrides, override_value

log = logging.getLogger("harness.study")
# Keys the sweep sets on every job; a user value would be silently replaced.
RESERVED_KEYS = ("role", "tuning")
# The trials' seed unless the settings say otherwise: one no final uses (see tuning_seed).
DEFAULT_TUNING_SEED = 1000

# Runs jobs (each a list of overrides) and returns each one's run record, or None where the job raised.
Launch = Callable[[list[list[str]]], Sequence[dict[str, Any] | None]]
# Composes the run config of one cell from its overrides.
Compose = Callable[[list[str]], DictConfig]


@dataclass
class Settings:
    """What a sweep is asked to do (``hydra.sweeper.*``; see hydra_plugins/harness_study_sweeper/config.py)."""

    seeds: list[int]  # seeds of the final runs
    n_trials: int = 8
    tuning_seed: int | None = None  # None = DEFAULT_TUNING_SEED
    storage: str | None = None  # None = sqlite:///<results_dir>/optuna.db
    sampler: Any = None  # `_target_` specs (dict or DictConfig)
    sampler_seed: int = 0
    pruner: Any = None
    search: Any = None  # per-method search-space overrides
    width: int = 1  # jobs launched at once


@dataclass
class Cell:
    """One grid cell: its overrides, composed config, search space and study."""

    overrides: list[str]
    axes: dict[str, str]
    cfg: DictConfig
    space: SearchSpace
    study_name: str
    storage_url: str
    direction: str


@dataclass
class Job:
    """One launch: a trial (number and id in the storage) or a final (seed)."""

    overrides: list[str]
    assignments: dict[str, Any]
    trial_number: int | None = None
    trial_id: int | None = None
    seed: int | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)


def check_key(key: str) -> None:
    """Refuse an override of a key the sweep sets per job (``role``, ``tuning.*``)."""
    if key.split(".")[0] in RESERVED_KEYS:
        raise ConfigError(key, "is set by the study sweeper for each trial and final; remove it")


def tuning_seed(explicit: Any, seeds: list[int]) -> int:
    """The trials' seed: by default one no final uses, so no reported test score repeats the draw that won
    the selection; a final seed only when the user sets it so (warned here, stated in the report)."""
    seed = DEFAULT_TUNING_SEED if explicit is None else explicit
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("hydra.sweeper.tuning_seed", f"must be an integer or null (got {seed!r})")
    if seed in seeds and explicit is None:
        raise ConfigError(
            "hydra.sweeper.seeds",
            f"includes {seed}, the default tuning seed; a final on the tuning seed repeats the winning trial's "
            "draw, so set hydra.sweeper.tuning_seed to a seed no final uses",
        )
    if seed in seeds:
        log.warning(
            "tuning seed %d is also a final seed (set explicitly): that final repeats the winning "
            "trial's draw; the report says so",
            seed,
        )
    return seed


class Sweep:
    """The sweep over a grid: ``plan`` checks every cell before anything trains, ``run`` tunes and finalises."""

    def __init__(self, settings: Settings, launch: Launch, compose: Compose) -> None:
        if not settings.seeds:
            raise ConfigError("hydra.sweeper.seeds", "must list at least one seed for the final runs")
        self.settings, self.launch, self.compose = settings, launch, compose
        self.tuning_seed = tuning_seed(settings.tuning_seed, settings.seeds)
        if settings.n_trials < 1:
            raise ConfigError("hydra.sweeper.n_trials", f"must be a positive integer (got {settings.n_trials})")
        study_stage.instantiate_component(settings.sampler, "hydra.sweeper.sampler", seed=0)
        study_stage.instantiate_component(settings.pruner, "hydra.sweeper.pruner")
        self.storages: dict[str, Any] = {}  # one Optuna storage per URL, opened while planning

    # ------------------------------------------------------------------ plan
    def plan(self, grid: Sequence[tuple[list[str], dict[str, str]]], fixed: Collection[str] = ()) -> list[Cell]:
        """Compose and validate every cell (its overrides, its swept values) before anything trains: a typo in
        the last cell costs seconds. ``fixed`` holds the keys set without sweeping; a tuned one is refused."""
        cells = [self._cell(list(overrides), axes, fixed) for overrides, axes in grid]
        names = [c.study_name for c in cells]
        if len(set(names)) != len(names):
            raise ConfigError(
                "hydra.sweeper.grid", "two cells compose to the same experiment; remove the repeated value"
            )
        return cells

    def _cell(self, overrides: list[str], axes: dict[str, str], fixed: Collection[str]) -> Cell:
        from harness import data
        from harness.config import validate
        from harness.run import build_objective

        cfg = self.compose(overrides)
        validate(cfg)
        build_objective(cfg)  # the objective's own settings, before anything trains
        space = SearchSpace(cfg.method, (self.settings.search or {}).get(cfg.method.name))
        for key in [*space.distributions, *space.derive]:
            if f"method.{key}" in fixed:
                raise ConfigError(
                    f"method.{key}", f"is tuned in this study; fix it with method.search.space.{key}=null instead"
                )
        space.check_extremes(cfg.method)
        storage_url = self.settings.storage or study_stage.default_storage(cfg.results_dir)
        self._storage(storage_url)
        coordinates = study_stage.cell_coordinates(cfg, axes)
        shared = {"tuning_seed": self.tuning_seed, "data_sha256": data.load_fingerprinted(cfg.task)[1]}
        name = study_stage.study_name(cfg, coordinates, [*space.distributions, *space.derive], shared)
        return Cell(overrides, coordinates, cfg, space, name, storage_url, study_stage.direction(cfg))

    def _storage(self, url: str) -> Any:
        if url not in self.storages:
            self.storages[url] = study_stage.open_storage(url)
        return self.storages[url]

    # ------------------------------------------------------------------ run
    def run(self, cells: list[Cell]) -> list[dict[str, Any]]:
        """Tune and finalise each cell in turn; returns (and writes) each cell's summary."""
        log.info(
            "study sweep: %d cells x %d trials on seed %d, finals over seeds %s",
            len(cells),
            self.settings.n_trials,
            self.tuning_seed,
            self.settings.seeds,
        )
        summaries = [self._run_cell(cell) for cell in cells]
        for summary in summaries:
            log.info("%s", describe(summary))
        return summaries

    def _launch(self, jobs: list[Job]) -> None:
        """Run jobs through ``launch``; each job's record (None when it raised) lands in ``result``."""
        for job, result in zip(jobs, self.launch([j.overrides for j in jobs]), strict=True):
            job.result = result

    def _run_cell(self, cell: Cell) -> dict[str, Any]:
        import optuna

        pruner = study_stage.instantiate_component(self.settings.pruner, "hydra.sweeper.pruner")
        study = optuna.create_study(
            study_name=cell.study_name,
            storage=self._storage(cell.storage_url),
            direction=cell.direction,
            pruner=pruner,
            load_if_exists=True,
        )
        study.set_user_attr("cell", cell.axes)
        study.set_user_attr("search", cell.space.describe())
        self._tune(cell, study)
        finals = self._finals(cell, study)
        seeds_used = {"tuning_seed": self.tuning_seed, "final_seeds": self.settings.seeds}
        summary = study_stage.cell_summary(
            study, cell.axes, cell.space.describe(), finals, cell.cfg.results_dir, seeds_used
        )
        study_stage.write_summary(cell.cfg.results_dir, summary)
        return summary

    @staticmethod
    def _job_overrides(cell: Cell, assignments: dict[str, Any], role: str, seed: int, **tuning: Any) -> list[str]:
        """The cell, the method values, and what the job's record says about its study (role, seed, tuning.*)."""
        tuning = {"study": cell.study_name, **tuning, "params": assignments}
        return [
            *cell.overrides,
            *method_overrides(assignments),
            f"role={role}",
            f"seed={seed}",
            *(f"tuning.{key}={override_value(value)}" for key, value in tuning.items()),
        ]

    def _trial_job(self, cell: Cell, number: int, trial_id: int, params: dict[str, Any]) -> Job:
        assignments = cell.space.assignments(params)
        pruner = self.settings.pruner
        if isinstance(pruner, DictConfig):
            pruner = OmegaConf.to_container(pruner)
        overrides = self._job_overrides(
            cell, assignments, "trial", self.tuning_seed, trial=number, trial_id=trial_id, storage=cell.storage_url,
            pruner=pruner,
        )  # fmt: skip
        return Job(overrides, assignments, trial_number=number, trial_id=trial_id)

    def _tune(self, cell: Cell, study: Any) -> None:
        """Relaunch trials a killed sweep left running, then ask new ones until the study holds n_trials."""
        from optuna.trial import TrialState

        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        log.info(
            "%s: %d of %d trials in storage, %d to resume",
            cell.study_name,
            _started(study),
            self.settings.n_trials,
            len(stale),
        )
        width = self.settings.width
        while True:
            jobs = [self._trial_job(cell, t.number, trial_id(t), t.params) for t in stale[:width]]
            stale = stale[width:]
            while len(jobs) < width and _started(study) < self.settings.n_trials:
                jobs.append(self._ask(cell, study))
            if not jobs:
                return
            self._launch(jobs)
            for job in jobs:
                tell(study, job)

    def _ask(self, cell: Cell, study: Any) -> Job:
        """A new trial from a sampler seeded by its trial number: resuming never changes what is sampled."""
        seed = self.settings.sampler_seed + len(study.get_trials(deepcopy=False))
        study.sampler = study_stage.instantiate_component(self.settings.sampler, "hydra.sweeper.sampler", seed=seed)
        trial = study.ask(cell.space.distributions)
        return self._trial_job(cell, trial.number, trial_id(trial), trial.params)

    def _finals(self, cell: Cell, study: Any) -> list[dict[str, Any]]:
        """The best trial's assignments re-run once per final seed; the records of those that returned."""
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.error("%s: no trial completed, so there is no best configuration and no final run", cell.study_name)
            return []
        best = study.best_trial
        assignments = best.user_attrs.get("assignments") or cell.space.assignments(best.params)
        jobs = [
            Job(self._job_overrides(cell, assignments, "final", seed, trial=best.number), assignments, seed=seed)
            for seed in self.settings.seeds
        ]
        width = self.settings.width
        for start in range(0, len(jobs), width):
            self._launch(jobs[start : start + width])
        return [job.result for job in jobs if job.result is not None]


def _started(study: Any) -> int:
    """Trials handed out so far: every state but WAITING (enqueued, not yet asked for)."""
    from optuna.trial import TrialState

    waiting = (TrialState.WAITING,)
    return len(study.get_trials(deepcopy=False)) - len(study.get_trials(deepcopy=False, states=waiting))


def tell(study: Any, job: Job) -> None:
    """Report a finished trial job: its value, or pruned, or failed (a job that raised counts as failed)."""
    import optuna
    from optuna.trial import TrialState

    record = job.result
    trial = optuna.trial.Trial(study, job.trial_id)
    trial.set_user_attr("assignments", job.assignments)
    if record is not None:
        trial.set_user_attr("run_id", record["run_id"])
    status = (record or {}).get("status")
    value = ((record or {}).get("primary_metric") or {}).get("validation")
    if record is not None and not same_setting(study, record):
        study.tell(job.trial_number, state=TrialState.FAIL, skip_if_finished=True)
        return
    if status == "pruned":
        study.tell(job.trial_number, state=TrialState.PRUNED, skip_if_finished=True)
    elif status == "success" and value is not None and math.isfinite(value):
        study.tell(job.trial_number, float(value), skip_if_finished=True)
    else:
        study.tell(job.trial_number, state=TrialState.FAIL, skip_if_finished=True)
    log.info("%s trial %d: %s %s", study.study_name, job.trial_number, status or "raised", job.assignments)


def same_setting(study: Any, record: dict[str, Any]) -> bool:
    """A study compares trials on one device type and precision: the first trial's are the study's, and a
    trial that ran elsewhere (another worker kind sharing the storage) fails instead of competing."""
    identity = record.get("identity") or {}
    setting = {key: identity.get(key) for key in ("device_type", "precision")}
    known = study.user_attrs.get("setting")
    if known is None:
        study.set_user_attr("setting", setting)
        return True
    if known != setting:
        log.error(
            "%s: trial %s ran on %s but the study's trials ran on %s; it is counted as failed (use another "
            "storage for another device)",
            study.study_name,
            record.get("tuning", {}).get("trial"),
            setting,
            known,
        )
        return False
    return True


def describe(summary: dict[str, Any]) -> str:
    """One log line per cell: its trial states, best validation value and parameters, mean final test."""
    best = summary["best"]
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items() if n)
    tests = [f["test"] for f in summary["finals"] if f["test"] is not None]
    mean = f"{sum(tests) / len(tests):.4f} over {len(tests)} seeds" if tests else "n/a"
    if best is None:
        return f"{summary['study']}: {states}; no completed trial"
    return f"{summary['study']}: {states}; best val {best['value']:.4f} with {best['params']}; final test {mean}"
