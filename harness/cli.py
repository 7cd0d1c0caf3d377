"""``harness-run``: the Hydra application behind every run and sweep.

Bad input exits with status 2 and one line on stderr naming the key. A run
that fails while training is recorded as failed: a single run then exits 1,
while in a multirun the sweep goes on to the next job.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger("harness")
# The config tree lives at the repository root (conf/), beside the package.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def _quiet_libraries() -> None:
    """Keep the console to the harness's own lines; records hold the details."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # PEFT calls transformers APIs that transformers 5 deprecates; not actionable by users.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.WARNING)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _apply_memory_limit(limit_gb: float | None) -> None:
    """Make running out of memory an exception in this process instead of a kill by the kernel.

    Only the soft limit is set, never above the hard one, so a later job in the
    same process (basic launcher) can set another value.
    """
    if limit_gb is None:
        return
    import resource

    soft = int(limit_gb * 2**30)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def _summary(record: dict) -> str:
    primary = record["primary_metric"]
    role = "" if record.get("role", "run") == "run" else f" [{record['role']} {record['tuning']['trial']}]"
    objective = "" if record.get("objective") in (None, "cls") else f"{record['objective']}+"
    return (
        f"{objective}{record['method']} on {record['task']} ({record['budget']}, seed {record['seed']}){role}: "
        f"{record['status']}, {primary['name']} val={_figure(primary['validation'])} test={_figure(primary['test'])}; "
        f"method params {record['params']['method']:,} of {record['params']['total']:,}; "
        f"train peak {_mib(record['memory']['train_peak_bytes'])} ({_mib(record['memory']['train_peak_above_baseline_bytes'])} above load); "
        f"{record['time']['train_seconds']:.1f}s train -> {record['run_id']}"
    )


def run_one(cfg: DictConfig) -> dict | None:
    """Validate, skip if done, train; returns the record (the earlier one when skipped, the failed one when failed).

    Whether a run is done is known only once its data is loaded and its device
    known (both are part of its identity), so skipping costs a data load.
    """
    from harness import records
    from harness.config import ConfigError, validate

    try:
        records.identity_config(cfg)  # resolves every interpolation
    except OmegaConfBaseException as error:
        raise ConfigError(getattr(error, "full_key", None) or "config", str(error).splitlines()[0]) from None
    validate(cfg)  # static checks first: a bad value fails before torch and the Trainer are even imported
    _quiet_libraries()
    _apply_memory_limit(cfg.get("memory_limit_gb"))
    from harness.run import RunFailed, execute, prepare

    prepared = prepare(cfg)
    rid, path = prepared.run_id, prepared.record_path
    if not cfg.force and records.is_done(cfg.results_dir, rid):
        log.info("skip %s: already succeeded (%s); force=true reruns it", rid, path)
        return records.read_record(path)
    callbacks = []
    if cfg.role == "trial":
        from harness.study import trial_reporter

        callbacks.append(trial_reporter(cfg))
    try:
        record = execute(prepared, callbacks)
    except RunFailed as error:
        log.error("run %s failed: %s (recorded in %s)", rid, error, path)
        if not _in_multirun():
            sys.exit(1)
        return error.record
    log.info("%s", _summary(record))
    return record


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> dict | None:
    """The Hydra task function; its return value (the record) is what a sweeper reads back."""
    from harness.config import ConfigError

    try:
        return run_one(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
