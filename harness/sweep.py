"""A tuning sweep: cross the grid's cells, tune each with its own Optuna study, re-run the best over seeds.

Hydra's own Optuna sweeper runs one study for a whole sweep and cannot resume
a crashed multirun. Here every grid cell (method × task × budget × model ×
any other swept key) owns one study in a persistent storage, named after the
cell. The sweep asks Optuna for trials, launches them through a ``launch``
callable (the study sweeper wraps Hydra's launcher: basic, joblib, submitit),
tells the results back, then launches the finals. Every trial and final is an
ordinary run record (``role`` trial|final), so a rerun skips what finished.

Several sweepers (another terminal, a SLURM array) may share one RDB storage:
each running trial carries a heartbeat (:func:`harness.study.heartbeats`), a
sweeper never relaunches a trial whose heartbeat is fresh, and a trial whose
heartbeat went silent (its worker and sweeper killed) is failed and queued
again with its own parameters by the next sweeper that asks; a worker that
dies under a running sweeper (a launcher reporting it lost) is re-queued at
once. A retry keeps its first attempt's number in its record, counts once
toward ``n_trials``, and the cell summary says how many retries there were.
A sweeper waits for the other sweepers' running trials before it picks the
best one. A journal file has no heartbeat: one sweeper per journal.

Nothing here knows Hydra's launcher or override grammar, so a test drives a
whole sweep with a fake ``launch`` that returns canned records.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness import storage as storage_stage
from harness import study as study_stage
from harness import tracking
from harness.config import ConfigError
from harness.progress import SweepProgress
from harness.search import SearchSpace, method_overrides, override_value

log = logging.getLogger("harness.study")
# Keys the sweep sets on every job; a user value would be silently replaced.
RESERVED_KEYS = ("role", "tuning")
# The trials' seed unless the settings say otherwise: one no final uses (see tuning_seed).
DEFAULT_TUNING_SEED = 1000

# What a launch returns for a job whose worker process died (killed, lost node): its trial is queued again.
LOST = "lost"
# Runs jobs (each a list of overrides) and returns each one's run record, None where the job raised, or LOST.
Launch = Callable[[list[list[str]]], Sequence[dict[str, Any] | str | None]]
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
    liveness: storage_stage.Liveness = field(default_factory=storage_stage.Liveness)  # heartbeats and retries


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
    trial_number: int | None = None  # the attempt's number in the storage (a retry has its own)
    trial_id: int | None = None
    seed: int | None = None
    result: dict[str, Any] | str | None = field(default=None, repr=False)


def check_key(key: str) -> None:
    """Refuse an override of a key the sweep sets per job (``role``, ``tuning.*``)."""
    if key.split(".")[0] in RESERVED_KEYS:
        raise ConfigError(key, "is set by the study sweeper for each trial and final; remove it")


def split_seeds(overrides: Sequence[Any], seeds: list[int]) -> tuple[list[Any], list[int]]:
    """Hydra overrides other than ``seed`` (each checked by :func:`check_key`), and the final seeds: a ``seed``
    override (one value or a sweep) replaces ``seeds``."""
    kept = []
    for override in overrides:
        key = override.get_key_element().lstrip("+~")
        if key == "seed":
            values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
            seeds = [_seed(value) for value in values]
        else:
            check_key(key)
            kept.append(override)
    return kept, seeds


def _seed(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError("seed", f"must be an integer (got {value!r})") from None


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
        self.progress: SweepProgress | None = None  # the terminal's line, set up by ``run``

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
        storage_url = self.settings.storage or storage_stage.default_storage(cfg.results_dir)
        self._storage(storage_url)
        coordinates = study_stage.cell_coordinates(cfg, axes)
        shared = {"tuning_seed": self.tuning_seed, "data_sha256": data.load_fingerprinted(cfg.task)[1]}
        name = study_stage.study_name(cfg, coordinates, [*space.distributions, *space.derive], shared)
        return Cell(overrides, coordinates, cfg, space, name, storage_url, study_stage.direction(cfg))

    def _storage(self, url: str) -> Any:
        if url not in self.storages:
            self.storages[url] = storage_stage.open_storage(url, self.settings.liveness)
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
        left = [max(0, self.settings.n_trials - self._finished_in_storage(cell)) for cell in cells]
        self.progress = SweepProgress(left, self.settings.n_trials, len(self.settings.seeds))
        summaries = [self._run_cell(cell, index) for index, cell in enumerate(cells)]
        for summary in summaries:
            log.info("%s", describe(summary))
        return summaries

    def _finished_in_storage(self, cell: Cell) -> int:
        """Trials of the cell's study already finished (an earlier sweep's, another sweeper's); 0 for a new one."""
        storage = self._storage(cell.storage_url)
        try:
            study_id = storage.get_study_id_from_name(cell.study_name)
        except KeyError:
            return 0
        return finished_trials(storage.get_all_trials(study_id, deepcopy=False))

    def _launch(self, jobs: list[Job], storage: Any = None) -> None:
        """Run jobs through ``launch``, beating for their trials meanwhile; each job's record (None when it
        raised, LOST when its worker died) lands in ``result``."""
        with storage_stage.heartbeats(storage, [j.trial_id for j in jobs if j.trial_id is not None]):
            results = self.launch([j.overrides for j in jobs])
        for job, result in zip(jobs, results, strict=True):
            job.result = result

    def _run_cell(self, cell: Cell, index: int) -> dict[str, Any]:
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
        self.progress.enter(index, finished_trials(study.get_trials(deepcopy=False)))
        with tracking.study_logger(cell.cfg, cell.study_name) as log_trial:  # the study as one experiment
            self._tune(cell, study, log_trial)
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

    def _trial_job(self, cell: Cell, trial: Any) -> Job:
        """A trial's job; its record carries the first attempt's number (see storage_stage.logical_number)."""
        assignments = cell.space.assignments(trial.params)
        pruner = self.settings.pruner
        if isinstance(pruner, DictConfig):
            pruner = OmegaConf.to_container(pruner)
        overrides = self._job_overrides(
            cell, assignments, "trial", self.tuning_seed, trial=storage_stage.logical_number(trial),
            trial_id=_trial_id(trial), storage=cell.storage_url, pruner=pruner,
            heartbeat_interval=self.settings.liveness.interval,
        )  # fmt: skip
        return Job(overrides, assignments, trial_number=trial.number, trial_id=_trial_id(trial))

    def _tune(self, cell: Cell, study: Any, log_trial: tracking.TrialLogger) -> None:
        """Ask trials until the study counts n_trials, launching ``width`` at a time; then wait for trials
        other sweepers are running, so the best trial is picked from all of them. Each trial told with a record
        is logged to the experiment tracker (``log_trial``)."""
        from optuna.trial import TrialState

        log.info(
            "%s: %d of %d trials in storage",
            cell.study_name,
            len(storage_stage.counted_trials(study.get_trials(deepcopy=False))),
            self.settings.n_trials,
        )
        storage = self._storage(cell.storage_url)
        at_start = True
        while True:
            self._recover(study, at_start)  # dead workers' trials queued again before each round of asks
            at_start = False
            jobs = []
            while len(jobs) < self.settings.width and (job := self._next_trial(cell, study)) is not None:
                jobs.append(job)
            if jobs:
                self._launch(jobs, storage)
                for job in jobs:
                    tell(study, job, self.settings.liveness)
                    if isinstance(job.result, dict):
                        log_trial(study, job.trial_id)
                ran = sum(self.progress.ran(job.result) for job in jobs)
                self.progress.trials_finished(ran, finished_trials(study.get_trials(deepcopy=False)))
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            log.info(
                "%s: waiting for trials %s, run by other workers (a silent one is retried after %d s)",
                cell.study_name,
                [t.number for t in running],
                self.settings.liveness.grace,
            )
            time.sleep(self.settings.liveness.interval)

    def _recover(self, study: Any, at_start: bool = False) -> None:
        """Fail trials whose heartbeat went silent and queue them again (Optuna's stale-trial callback).

        A journal storage has no heartbeat: its trials left running by a killed sweep are failed and queued
        again when a sweep starts (hence one sweeper per journal file).
        """
        import optuna
        from optuna.trial import TrialState

        if storage_stage.heartbeat_enabled(study._storage):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)
            # Optuna never fails a running trial without a heartbeat: one left by a sweep of an older harness, or
            # whose sweeper died between its ask and its first beat. Past the grace period it is as dead.
            old = datetime.now() - timedelta(seconds=self.settings.liveness.grace)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                # The attribute holds the number of the trial it was set for: a retry inherits its failed
                # attempt's system attributes, and must not pass for beating before its own first beat.
                if trial.system_attrs.get(storage_stage.BEATING) != trial.number and trial.datetime_start < old:
                    requeue(study, trial, self.settings.liveness, "running without a heartbeat past the grace period")
        elif at_start:
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                requeue(study, trial, self.settings.liveness, "left running by a killed sweep")

    def _next_trial(self, cell: Cell, study: Any) -> Job | None:
        """A queued retry, else a new trial while the study counts fewer than n_trials; None when done."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        retry_waiting = any(
            t.state == TrialState.WAITING and storage_stage.retried_number(t) is not None for t in trials
        )
        if len(storage_stage.counted_trials(trials)) >= self.settings.n_trials and not retry_waiting:
            return None
        return self._ask(cell, study)

    def _ask(self, cell: Cell, study: Any) -> Job | None:
        """A trial from a sampler seeded by its place among the new trials (harness.sampling: resuming never
        changes what is sampled, two sweepers never draw alike); a queued retry comes first with its own
        parameters. None when another sweeper asked for the last one at the same moment: that surplus trial is
        closed unrun."""
        from optuna.trial import TrialState

        from harness.sampling import TrialSeededSampler

        study.sampler = TrialSeededSampler(
            lambda seed: study_stage.instantiate_component(self.settings.sampler, "hydra.sweeper.sampler", seed=seed),
            self.settings.sampler_seed,
        )
        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for study.optimize
            warnings.simplefilter("ignore")
            trial = study.ask(cell.space.distributions)
        if storage_stage.heartbeat_enabled(study._storage):
            study._storage.record_heartbeat(_trial_id(trial))  # alive from the ask, before its worker starts
            study._storage.set_trial_system_attr(_trial_id(trial), storage_stage.BEATING, trial.number)
        frozen = study._storage.get_trial(_trial_id(trial))
        if storage_stage.retried_number(frozen) is None and self._is_surplus(study, frozen.number):
            trial.set_user_attr(storage_stage.SURPLUS, True)
            study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
            log.info(
                "%s: trial %d closed unrun: another sweeper asked for the last one", cell.study_name, frozen.number
            )
            return None
        return self._trial_job(cell, frozen)

    def _is_surplus(self, study: Any, number: int) -> bool:
        """More than n_trials trials counted up to this one: two sweepers asked at once."""
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number <= number]
        return len(storage_stage.counted_trials(earlier)) > self.settings.n_trials

    def _finals(self, cell: Cell, study: Any) -> list[dict[str, Any]]:
        """The best trial's assignments re-run once per final seed; the records of those that returned."""
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.error("%s: no trial completed, so there is no best configuration and no final run", cell.study_name)
            return []
        best = study.best_trial
        assignments = best.user_attrs.get("assignments") or cell.space.assignments(best.params)
        number = storage_stage.logical_number(best)  # the trial records' number for it
        jobs = [
            Job(self._job_overrides(cell, assignments, "final", seed, trial=number), assignments, seed=seed)
            for seed in self.settings.seeds
        ]
        width = self.settings.width
        finished: set[int] = set()  # seeds whose final ran to an end (one that raised included)
        for attempt in range(1 + self.settings.liveness.max_retry):  # a final whose worker died runs again
            pending = [job for job in jobs if job.result == LOST or (attempt == 0 and job.result is None)]
            if not pending:
                break
            if attempt:
                log.warning("%s: %d finals lost with their workers; running them again", cell.study_name, len(pending))
            for start in range(0, len(pending), width):
                batch = pending[start : start + width]
                self._launch(batch)
                finished.update(job.seed for job in batch if job.result != LOST)
                self.progress.finals_finished(sum(self.progress.ran(job.result) for job in batch), len(finished))
        lost = [job.seed for job in jobs if job.result == LOST]
        if lost:
            log.error("%s: finals of seeds %s lost with their workers %d times; rerun the sweep", cell.study_name,
                      lost, 1 + self.settings.liveness.max_retry)  # fmt: skip
        return [job.result for job in jobs if isinstance(job.result, dict)]


def _trial_id(trial: Any) -> int:
    from harness.compat import trial_id  # imports torch: not at module level, the command line's checks use this module

    return trial_id(trial)


def requeue(study: Any, trial: Any, liveness: storage_stage.Liveness, why: str) -> None:
    """Fail a trial whose worker is gone and queue it again with its parameters (Optuna's retry callback, the
    one a stale heartbeat triggers), so the next ask runs it. Only the sweeper whose update closes the trial
    queues it: another that closed it first has queued it already."""
    import optuna
    from optuna.trial import TrialState

    try:
        if not study._storage.set_trial_state_values(_trial_id(trial), state=TrialState.FAIL):
            return
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    frozen = study._storage.get_trial(_trial_id(trial))
    liveness.retry_callback()(study, frozen)
    attempts = len(frozen.system_attrs.get("retry_history", [])) + 1
    number = storage_stage.logical_number(frozen)
    if attempts > liveness.max_retry:
        log.error("%s trial %d: %s; not retried after %d attempts", study.study_name, number, why, attempts)
    else:
        log.warning("%s trial %d: %s; queued again with its parameters", study.study_name, number, why)


def tell(study: Any, job: Job, liveness: storage_stage.Liveness | None = None) -> None:
    """Report a finished trial job: its value, or pruned, or failed (a job that raised counts as failed); a job
    whose worker died is queued again. A trial another sweeper already declared dead keeps that verdict: its
    retry finds this job's record (same run_id) instead of training again."""
    import optuna

    current = study._storage.get_trial(job.trial_id)
    if current.state.is_finished():
        log.warning("%s trial %d: already closed (%s) by another sweeper", study.study_name,
                    storage_stage.logical_number(current), current.state.name)  # fmt: skip
        return
    if job.result == LOST:
        requeue(study, current, liveness or storage_stage.Liveness(), "its worker died")
        return
    try:
        status = _tell(study, job)
    except optuna.exceptions.UpdateFinishedTrialError:  # another sweeper declared it dead meanwhile
        log.warning("%s trial %d: closed by another sweeper meanwhile", study.study_name,
                    storage_stage.logical_number(current))  # fmt: skip
        return
    log.info("%s trial %d: %s %s", study.study_name, storage_stage.logical_number(current), status, job.assignments)


def _tell(study: Any, job: Job) -> str:
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
    elif status == "pruned":
        study.tell(job.trial_number, state=TrialState.PRUNED, skip_if_finished=True)
    elif status == "success" and value is not None and math.isfinite(value):
        study.tell(job.trial_number, float(value), skip_if_finished=True)
    else:
        study.tell(job.trial_number, state=TrialState.FAIL, skip_if_finished=True)
    return status or "raised"


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


def finished_trials(trials: list[Any]) -> int:
    """Trials that count toward ``n_trials`` and are over (complete, pruned or failed): the sweep's ``trial t/T``."""
    return sum(1 for trial in storage_stage.counted_trials(trials) if trial.state.is_finished())


def describe(summary: dict[str, Any]) -> str:
    """One log line per cell: its trial states, best validation value and parameters, mean final test."""
    best = summary["best"]
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items() if n)
    tests = [f["test"] for f in summary["finals"] if f["test"] is not None]
    mean = f"{sum(tests) / len(tests):.4f} over {len(tests)} seeds" if tests else "n/a"
    if best is None:
        return f"{summary['study']}: {states}; no completed trial"
    return f"{summary['study']}: {states}; best val {best['value']:.4f} with {best['params']}; final test {mean}"
