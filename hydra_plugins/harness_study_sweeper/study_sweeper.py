"""``hydra/sweeper=study``: cross the grid, tune each cell with Optuna, re-run the best with several seeds.

Hydra's own Optuna sweeper runs one study for a whole sweep and cannot resume
a crashed multirun. Here every grid cell (method × task × budget × model ×
any other swept key) owns one study in a persistent storage, named after the
cell. The sweeper asks Optuna for trials, launches them through whichever
Hydra launcher is configured (basic, joblib, submitit), tells the results
back, then launches the finals. Every trial and final is an ordinary run
record (``role`` trial|final), so a rerun skips what finished, and a trial
left RUNNING by a killed sweep is relaunched with its own parameters: the
study ends with exactly ``n_trials`` trials.

Run one sweeper per storage at a time; launchers parallelise within it.
"""

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("harness.study")
# Keys the sweeper sets on every job; a user value would be silently replaced.
SWEEPER_KEYS = ("role", "tuning")
# The trials' seed unless hydra.sweeper.tuning_seed says otherwise: one no final uses (see config.py).
DEFAULT_TUNING_SEED = 1000


@dataclass
class Cell:
    """One grid cell: its overrides, composed config, search space and study."""

    overrides: list[str]
    axes: dict[str, str]
    cfg: DictConfig
    space: Any
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


class StudySweeper(Sweeper):
    def __init__(self, **params: Any) -> None:
        super().__init__()
        self.params = OmegaConf.create(params)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None
        self.job_idx = 0
        self.storages: dict[str, Any] = {}  # one Optuna storage per URL, opened while planning
        self.tuning_seed = DEFAULT_TUNING_SEED

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------ plan
    def _parse(self, arguments: list[str]) -> tuple[list, list[int]]:
        """Overrides other than seed, and the final seeds (a ``seed`` override replaces ``seeds``)."""
        from harness.config import ConfigError

        grid = [f"{key}={value}" for key, value in (self.params.grid or {}).items()]
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        seeds, kept = [int(s) for s in self.params.seeds], []
        for override in parser.parse_overrides([*grid, *arguments]):
            key = override.get_key_element().lstrip("+~")
            if key == "seed":
                values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
                seeds = [int(v) for v in values]
            elif key.split(".")[0] in SWEEPER_KEYS:
                raise ConfigError(key, "is set by the study sweeper for each trial and final; remove it")
            else:
                kept.append(override)
        if not seeds:
            raise ConfigError("hydra.sweeper.seeds", "must list at least one seed for the final runs")
        self.tuning_seed = self._tuning_seed(seeds)
        return kept, seeds

    def _tuning_seed(self, seeds: list[int]) -> int:
        """The trials' seed: by default one no final uses, so no reported test score repeats the draw that won
        the selection; a final seed only when the user sets it so (warned here, stated in the report)."""
        from harness.config import ConfigError

        explicit = self.params.tuning_seed
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
            log.warning("tuning seed %d is also a final seed (set explicitly): that final repeats the winning "
                        "trial's draw; the report says so", seed)
        return seed

    def _plan(self, arguments: list[str]) -> tuple[list[Cell], list[int]]:
        """Compose and validate every cell before anything trains: a typo in the last cell costs seconds."""
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        from harness import study
        from harness.config import ConfigError

        overrides, seeds = self._parse(arguments)
        axis_keys = [o.get_key_element() for o in overrides if o.is_sweep_override()]
        fixed = {o.get_key_element().lstrip("+~") for o in overrides if not o.is_sweep_override()}
        if self.params.n_trials < 1:
            raise ConfigError("hydra.sweeper.n_trials", f"must be a positive integer (got {self.params.n_trials})")
        study.instantiate_component(self.params.sampler, "hydra.sweeper.sampler", seed=0)
        study.instantiate_component(self.params.pruner, "hydra.sweeper.pruner")
        cells = []
        for cell_overrides in BasicSweeper.split_arguments(overrides, None)[0]:
            axes = dict(o.split("=", 1) for o in cell_overrides if o.split("=", 1)[0] in axis_keys)
            cells.append(self._cell(list(cell_overrides), axes, fixed))
        names = [c.study_name for c in cells]
        if len(set(names)) != len(names):
            raise ConfigError(
                "hydra.sweeper.grid", "two cells compose to the same experiment; remove the repeated value"
            )
        return cells, seeds

    def _cell(self, overrides: list[str], axes: dict[str, str], fixed: set[str]) -> Cell:
        from harness import data, study
        from harness.config import ConfigError, validate
        from harness.run import build_objective
        from harness.search import SearchSpace

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        validate(cfg)
        build_objective(cfg)  # the objective's own settings, before anything trains
        space = SearchSpace(cfg.method, (self.params.search or {}).get(cfg.method.name))
        for key in [*space.distributions, *space.derive]:
            if f"method.{key}" in fixed:
                raise ConfigError(
                    f"method.{key}", f"is tuned in this study; fix it with method.search.space.{key}=null instead"
                )
        space.check_extremes(cfg.method)
        storage_url = self.params.storage or study.default_storage(cfg.results_dir)
        self._storage(storage_url)
        coordinates = study.cell_coordinates(cfg, axes)
        shared = {"tuning_seed": self.tuning_seed, "data_sha256": data.fingerprint(data.load_task(cfg.task))}
        name = study.study_name(cfg, coordinates, [*space.distributions, *space.derive], shared)
        return Cell(overrides, coordinates, cfg, space, name, storage_url, study.direction(cfg))

    def _storage(self, url: str):
        from harness import study

        if url not in self.storages:
            self.storages[url] = study.open_storage(url)
        return self.storages[url]

    # ------------------------------------------------------------------ run
    def sweep(self, arguments: list[str]) -> Any:
        from harness.config import ConfigError

        try:
            cells, seeds = self._plan(arguments)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("study sweep: %d cells x %d trials on seed %d, finals over seeds %s", len(cells), self.params.n_trials,
                 self.tuning_seed, seeds)
        summaries = [self._run_cell(cell, seeds) for cell in cells]
        for summary in summaries:
            log.info("%s", _describe(summary))
        return summaries

    def _parallelism(self) -> int:
        if self.params.n_jobs:
            return int(self.params.n_jobs)
        launcher = self.config.hydra.launcher
        for key in ("n_jobs", "array_parallelism"):
            value = launcher.get(key)
            if value:
                return os.cpu_count() or 1 if value == -1 else int(value)
        return 1

    def _launch(self, jobs: list[Job]) -> None:
        """Run jobs through the configured launcher; each job's record (or None when it raised) lands in ``result``."""
        returns: Sequence[JobReturn] = self.launcher.launch([j.overrides for j in jobs], initial_job_idx=self.job_idx)
        self.job_idx += len(jobs)
        for job, ret in zip(jobs, returns, strict=True):
            try:
                job.result = ret.return_value  # re-raises what the job raised
            except Exception as error:  # noqa: BLE001 - one job's crash must not end the sweep
                log.error("job %s raised %s: %s", ret.overrides, type(error).__name__, error)

    def _run_cell(self, cell: Cell, seeds: list[int]) -> dict[str, Any]:
        import optuna

        from harness import study as study_stage

        pruner = study_stage.instantiate_component(self.params.pruner, "hydra.sweeper.pruner")
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
        finals = self._finals(cell, study, seeds)
        seeds_used = {"tuning_seed": self.tuning_seed, "final_seeds": seeds}
        summary = study_stage.cell_summary(study, cell.axes, cell.space.describe(), finals, cell.cfg.results_dir, seeds_used)
        study_stage.write_summary(cell.cfg.results_dir, summary)
        return summary

    @staticmethod
    def _job_overrides(cell: Cell, assignments: dict[str, Any], role: str, seed: int, **tuning: Any) -> list[str]:
        """The cell, the method values, and what the job's record says about its study (role, seed, tuning.*)."""
        from harness.search import method_overrides, override_value

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
        seed = self.tuning_seed
        pruner = OmegaConf.to_container(self.params.pruner) if self.params.pruner is not None else None
        overrides = self._job_overrides(
            cell, assignments, "trial", seed, trial=number, trial_id=trial_id, storage=cell.storage_url, pruner=pruner
        )
        return Job(overrides, assignments, trial_number=number, trial_id=trial_id)

    def _tune(self, cell: Cell, study) -> None:
        """Relaunch trials a killed sweep left running, then ask new ones until the study holds n_trials."""
        from optuna.trial import TrialState

        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        log.info(
            "%s: %d of %d trials in storage, %d to resume",
            cell.study_name,
            self._started(study),
            self.params.n_trials,
            len(stale),
        )
        width = self._parallelism()
        while True:
            # Optuna exposes a trial's storage id only as _trial_id; a worker needs it to report to that trial.
            jobs = [self._trial_job(cell, t.number, t._trial_id, t.params) for t in stale[:width]]
            stale = stale[width:]
            while len(jobs) < width and self._started(study) < self.params.n_trials:
                jobs.append(self._ask(cell, study))
            if not jobs:
                return
            self._launch(jobs)
            for job in jobs:
                _tell(study, job)

    @staticmethod
    def _started(study) -> int:
        """Trials handed out so far: every state but WAITING (enqueued, not yet asked for)."""
        from optuna.trial import TrialState

        waiting = (TrialState.WAITING,)
        return len(study.get_trials(deepcopy=False)) - len(study.get_trials(deepcopy=False, states=waiting))

    def _ask(self, cell: Cell, study) -> Job:
        """A new trial from a sampler seeded by its trial number: resuming never changes what is sampled."""
        from harness import study as study_stage

        seed = self.params.sampler_seed + len(study.get_trials(deepcopy=False))
        study.sampler = study_stage.instantiate_component(self.params.sampler, "hydra.sweeper.sampler", seed=seed)
        trial = study.ask(cell.space.distributions)
        return self._trial_job(cell, trial.number, trial._trial_id, trial.params)

    def _finals(self, cell: Cell, study, seeds: list[int]) -> list[dict[str, Any]]:
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.error("%s: no trial completed, so there is no best configuration and no final run", cell.study_name)
            return []
        best = study.best_trial
        assignments = best.user_attrs.get("assignments") or cell.space.assignments(best.params)
        jobs = [
            Job(self._job_overrides(cell, assignments, "final", seed, trial=best.number), assignments, seed=seed)
            for seed in seeds
        ]
        width = self._parallelism()
        for start in range(0, len(jobs), width):
            self._launch(jobs[start : start + width])
        return [job.result for job in jobs if job.result is not None]


def _tell(study, job: Job) -> None:
    """Report a finished trial job: its value, or pruned, or failed (a job that raised counts as failed)."""
    import math

    import optuna
    from optuna.trial import TrialState

    record = job.result
    trial = optuna.trial.Trial(study, job.trial_id)
    trial.set_user_attr("assignments", job.assignments)
    if record is not None:
        trial.set_user_attr("run_id", record["run_id"])
    status = (record or {}).get("status")
    value = ((record or {}).get("primary_metric") or {}).get("validation")
    if record is not None and not _same_setting(study, record):
        study.tell(job.trial_number, state=TrialState.FAIL, skip_if_finished=True)
        return
    if status == "pruned":
        study.tell(job.trial_number, state=TrialState.PRUNED, skip_if_finished=True)
    elif status == "success" and value is not None and math.isfinite(value):
        study.tell(job.trial_number, float(value), skip_if_finished=True)
    else:
        study.tell(job.trial_number, state=TrialState.FAIL, skip_if_finished=True)
    log.info("%s trial %d: %s %s", study.study_name, job.trial_number, status or "raised", job.assignments)


def _same_setting(study, record: dict[str, Any]) -> bool:
    """A study compares trials on one device type and precision: the first trial's are the study's, and a
    trial that ran elsewhere (another worker kind sharing the storage) fails instead of competing."""
    identity = record.get("identity") or {}
    setting = {key: identity.get(key) for key in ("device_type", "precision")}
    known = study.user_attrs.get("setting")
    if known is None:
        study.set_user_attr("setting", setting)
        return True
    if known != setting:
        log.error("%s: trial %s ran on %s but the study's trials ran on %s; it is counted as failed (use another "
                  "storage for another device)", study.study_name, record.get("tuning", {}).get("trial"), setting, known)
        return False
    return True


def _describe(summary: dict[str, Any]) -> str:
    best = summary["best"]
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items() if n)
    tests = [f["test"] for f in summary["finals"] if f["test"] is not None]
    mean = f"{sum(tests) / len(tests):.4f} over {len(tests)} seeds" if tests else "n/a"
    if best is None:
        return f"{summary['study']}: {states}; no completed trial"
    return f"{summary['study']}: {states}; best val {best['value']:.4f} with {best['params']}; final test {mean}"
