"""``hydra/sweeper=study``: Hydra's Sweeper interface over ``harness.sweep``.

Hydra discovers sweepers only in the ``hydra_plugins`` namespace, so this
module adapts Hydra's side and nothing else: it parses the overrides into
cells and final seeds, composes each cell's config, and wraps the configured
launcher (basic, joblib, submitit) as the sweep's ``launch``. Cells, studies,
trials, finals and resume live in ``harness.sweep``.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("harness.study")


def refuse_inside_a_launch() -> None:
    """A study under ``torchrun`` would be one study per rank, each asking its own trials: its runs take several
    processes through ``distributed.nproc_per_node``, which each job starts for itself."""
    from harness import distributed
    from harness.config import ConfigError

    if distributed.launched():
        raise ConfigError(
            "hydra/sweeper",
            f"study runs inside a launch of {distributed.world_size()} processes (every rank would run its own "
            "study); run harness-run -m alone and give each run its processes with distributed.nproc_per_node=N",
        )


class StudySweeper(Sweeper):
    def __init__(self, **params: Any) -> None:
        super().__init__()
        self.params = OmegaConf.create(params)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from harness.config import ConfigError
        from harness.sweep import Settings, Sweep

        try:
            refuse_inside_a_launch()
            overrides, seeds = self._parse(arguments)
            p = self.params
            settings = Settings(
                seeds=seeds, n_trials=p.n_trials, tuning_seed=p.tuning_seed, storage=p.storage, sampler=p.sampler,
                sampler_seed=p.sampler_seed, pruner=p.pruner, search=p.search, width=self._parallelism(),
                liveness=self._liveness(),
            )  # fmt: skip
            sweep = Sweep(settings, self._launch, self._compose)
            cells = sweep.plan(*self._grid(overrides))
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return sweep.run(cells)

    def _parse(self, arguments: list[str]) -> tuple[list[Override], list[int]]:
        """Overrides other than seed, and the final seeds (a ``seed`` override replaces ``seeds``)."""
        from harness.sweep import split_seeds

        grid = [f"{key}={value}" for key, value in (self.params.grid or {}).items()]
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        return split_seeds(parser.parse_overrides([*grid, *arguments]), [int(s) for s in self.params.seeds])

    @staticmethod
    def _grid(overrides: list[Override]) -> tuple[list[tuple[list[str], dict[str, str]]], set[str]]:
        """Each cell's overrides with its swept values, and the keys set without sweeping."""
        from harness.compat import cross_sweep_overrides

        axis_keys = [o.get_key_element() for o in overrides if o.is_sweep_override()]
        fixed = {o.get_key_element().lstrip("+~") for o in overrides if not o.is_sweep_override()}
        cells = [
            (cell, dict(o.split("=", 1) for o in cell if o.split("=", 1)[0] in axis_keys))
            for cell in cross_sweep_overrides(overrides)
        ]
        return cells, fixed

    def _compose(self, overrides: list[str]) -> DictConfig:
        """A cell's run config, as a job of this sweep would compose it, without the hydra node."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    def _parallelism(self) -> int:
        """Jobs launched at once: hydra.sweeper.n_jobs, else the launcher's own parallelism, else 1."""
        if self.params.n_jobs:
            return int(self.params.n_jobs)
        launcher = self.config.hydra.launcher
        for key in ("n_jobs", "array_parallelism"):
            value = launcher.get(key)
            if value:
                return os.cpu_count() or 1 if value == -1 else int(value)
        return 1

    def _liveness(self):
        from harness.study import Liveness

        p = self.params
        return Liveness.checked(p.heartbeat_interval, p.grace_period, p.max_retry)

    def _launch(self, batch: list[list[str]]) -> list[dict[str, Any] | str | None]:
        """Run jobs through the configured launcher: each job's record, None where it raised, LOST for every
        job of a batch whose worker process died (joblib's TerminatedWorkerError ends the whole batch)."""
        from harness.sweep import LOST

        results: list[dict[str, Any] | str | None] = []
        try:
            returns = list(self.launcher.launch(batch, initial_job_idx=self.job_idx))
        except Exception as error:  # noqa: BLE001 - a dead worker must not end the sweep
            log.error("a worker of this batch died (%s: %s); its trials are queued again", type(error).__name__, error)
            self.job_idx += len(batch)
            return [LOST] * len(batch)
        for ret in returns:
            try:
                results.append(ret.return_value)  # re-raises what the job raised
            except Exception as error:  # noqa: BLE001 - one job's crash must not end the sweep
                log.error("job %s raised %s: %s", ret.overrides, type(error).__name__, error)
                results.append(None)
        self.job_idx += len(batch)
        return results
