"""``harness-run``: the Hydra application behind every run and sweep.

Bad input exits with status 2 and one line on stderr naming the key. A run
that fails while training is recorded as failed: a single run then exits 1,
while in a multirun the sweep goes on to the next job.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness import distributed
from harness.data.catalog import register_tasks
from harness.paths import config_dir

log = logging.getLogger("harness")
# The config tree: a checkout's conf/, or the installed package harness_conf (harness.paths). The task group is
# tasks/ (harness.data.catalog), stored in Hydra's ConfigStore before anything composes.
CONFIG_DIR = config_dir()
# Config groups renamed since: typing the old name is one error line naming the new one, not Hydra's "Could not
# override" (the presets in conf/experiment/ were conf/study/, a name now left to the Optuna studies).
RENAMED_GROUPS = {"study": "experiment"}
register_tasks()


def _quiet_libraries() -> None:
    """Keep the console to the harness's own lines; records hold the details."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from harness.compat import hide_transformers_deprecations

    hide_transformers_deprecations()
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.WARNING)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# The soft data limit this process had before a job capped it (basic launcher: every job of a sweep runs here);
# a job without a cap restores it.
_MEMORY_LIMIT_SET: list[int] = []


def _apply_memory_limit(limit_gb: float | None) -> None:
    """Make running out of memory an exception in this process instead of a kill by the kernel.

    Only the soft limit is set, never above the hard one, so a later job in the
    same process (basic launcher) can set another value or lift it (None).
    """
    import resource

    soft_before, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if limit_gb is None:
        if _MEMORY_LIMIT_SET:  # an earlier job of this process (basic launcher) set one: back to the user's own
            resource.setrlimit(resource.RLIMIT_DATA, (_MEMORY_LIMIT_SET[0], hard))
        return
    from harness.preflight import check_memory_limit

    check_memory_limit(limit_gb)
    soft = int(limit_gb * 2**30)
    if not _MEMORY_LIMIT_SET:
        _MEMORY_LIMIT_SET.append(soft_before)  # the limit the process started with (a user's `ulimit -d`)
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
        f"{record['time']['train_seconds']:.1f}s train{_retention_text(record)} -> {record['run_id']}"
    )


def _retention_text(record: dict) -> str:
    """The forgetting or retention figure, when the run measured one (harness.forgetting)."""
    block = record.get("forgetting") or {}
    if "forgetting" in block:
        return (
            f"; forgetting {block['forgetting']:+.4f} nats/token ({block['before_ce']:.3f} -> {block['after_ce']:.3f})"
        )
    retention = (record.get("retention") or {}).get("primary_metric") or {}
    if retention.get("value") is not None:
        return f"; retention {retention['name']} {retention['value']:.4f} on {record['retention']['task']}"
    return ""


def run_one(cfg: DictConfig) -> dict | None:
    """Validate, skip if done, train; returns the record (the earlier one when skipped, the failed one when failed).

    Whether a run is done is known only once its data is loaded and its device
    known (both are part of its identity), so skipping costs a data load.
    """
    from harness.config import resolve_run_config, validate

    resolve_run_config(cfg)
    validate(cfg)  # static checks first: a bad value fails before torch and the Trainer are even imported
    if not distributed.is_main_process():
        log.setLevel(logging.WARNING)  # rank 0 tells the run's progress and summary; the others only what goes wrong
    _quiet_libraries()
    from harness.run import RecordNotWritten, RunFailed, execute, prepare

    _apply_memory_limit(None)  # an earlier job's cap (basic launcher: same process) is not this job's
    prepared = prepare(cfg)
    _apply_memory_limit(cfg.get("memory_limit_gb"))  # libraries and data loaded: what is left is the run's
    rid, path = prepared.run_id, prepared.record_path
    if not cfg.force:
        skip, earlier = _check_earlier(path)
        if skip:
            return earlier
    if distributed.starts_processes(cfg):
        return _run_on_processes(prepared)
    callbacks, beating = [], contextlib.nullcontext()
    if cfg.role == "trial":
        from harness.storage import heartbeats
        from harness.study import trial_reporter

        reporter = trial_reporter(cfg)
        callbacks.append(reporter)
        beating = heartbeats(reporter.trial.storage, [int(cfg.tuning.trial_id)])  # its sweeper may die first
    try:
        with beating:
            record = execute(prepared, callbacks)
    except RunFailed as error:
        log.error("run %s failed: %s (recorded in %s)", rid, error, path)
        if not _in_multirun():
            sys.exit(1)
        return error.record
    except RecordNotWritten as error:  # no record at all: one line, and in a multirun the sweep goes on
        if not _in_multirun():
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        log.error("run %s failed: %s", rid, error)
        return None
    if not os.environ.get(distributed.LAUNCHED_BY_HARNESS):  # else the process that started the ranks tells it
        log.info("%s", _summary(record))
    return record


def _run_on_processes(prepared) -> dict:
    """``distributed.nproc_per_node=N``: start the run's N ranks (torchrun) here, wait, and return the record rank 0
    wrote; when the ranks ended without one (killed, or a rank other than 0 failed and torchrun stopped the
    rest), a failed record saying so."""
    from harness import records

    cfg, rid, path = prepared.cfg, prepared.run_id, prepared.record_path
    nproc = distributed.nproc_per_node(cfg)
    started = datetime.now(timezone.utc).isoformat()
    log.info("run %s on %d processes (torchrun --standalone --nproc_per_node=%d)", rid, nproc, nproc)
    status = distributed.run_processes(cfg, nproc)
    record = records.read_record(path)
    if record is None or str(record.get("started_at") or "") < started:
        record = records.started_record(cfg, rid, prepared.identity)
        record["distributed"].update(world_size=nproc, launcher=distributed.HARNESS_LAUNCHER)
        record.update(
            status="failed",
            error=f"RuntimeError: the run's {nproc} processes exited with status {status} before rank 0 wrote a record",
            error_kind="exception",
            traceback=[],
            finished_at=datetime.now(timezone.utc).isoformat(),
        )
        records.write_record(path, record)
    if record["status"] == "failed":
        log.error("run %s failed: %s (recorded in %s)", rid, record["error"], path)
        if not _in_multirun():
            sys.exit(1)
        return record
    log.info("%s", _summary(record))
    return record


def _check_earlier(path) -> tuple[bool, dict | None]:
    """Whether the run about to start is skipped, and the record run_one then returns.

    A finished record is skipped. A corrupted one is named and the run reruns,
    replacing it. A record of a newer schema is named and skipped: this older
    harness cannot read it and does not overwrite it (force=true does).
    """
    from harness import records

    earlier = records.inspect_record(path)
    if earlier.newer:
        log.warning("skip %s: %s; this harness does not overwrite it (force=true does)", path, earlier.problem)
        return True, None
    if earlier.problem:
        log.warning("%s: %s; running it again replaces it", path, earlier.problem)
        return False, None
    if earlier.record is not None and earlier.record.get("status") in records.FINISHED_STATUSES:
        log.info("skip %s: already succeeded (%s); force=true reruns it", earlier.record["run_id"], path)
        return True, earlier.record
    return False, None


_RANK_OUTPUT_DIRS: dict[str, str] = {}


def rank_output_dir(path: str) -> str:
    """Hydra's output folder (``hydra.run.dir``, ``hydra.sweep.dir``, through the resolver
    ``harness.rank_output_dir``): ``path`` on rank 0 and in a single process; on the other ranks of a run, which
    write nothing under results_dir, a temporary folder (config copies, log file), removed when they exit."""
    if distributed.rank() == 0:
        return path
    if path not in _RANK_OUTPUT_DIRS:
        _RANK_OUTPUT_DIRS[path] = tempfile.mkdtemp(prefix=f"harness-rank{distributed.rank()}-")
        atexit.register(shutil.rmtree, _RANK_OUTPUT_DIRS[path], True)
    return _RANK_OUTPUT_DIRS[path]


OmegaConf.register_new_resolver("harness.rank_output_dir", rank_output_dir, replace=True)


def refuse_renamed_groups(arguments: list[str]) -> None:
    """Exit 2 with one line when an override names a renamed config group (``study=demo``)."""
    for argument in arguments:
        key, assigned, value = argument.partition("=")
        new = RENAMED_GROUPS.get(key.lstrip("+~"))
        if assigned and new:
            print(
                f"error: {key}: the presets' group is named '{new}' now (conf/{new}/); use {new}={value}",
                file=sys.stderr,
            )
            sys.exit(2)


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def run_config(cfg: DictConfig) -> dict | None:
    """The Hydra task function; its return value (the record) is what a sweeper reads back."""
    from harness.config import ConfigError

    try:
        return run_one(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """``harness-run``: Hydra's command line (sys.argv), after the checks that need no model
    (:mod:`harness.preflight`): a bad input is one line and exit status 2, and nothing is written."""
    from harness.config import ConfigError
    from harness.preflight import check_command_line
    from harness.records import sweep_stale_temporaries

    refuse_renamed_groups(sys.argv[1:])
    try:
        results_dirs = check_command_line(sys.argv[1:], CONFIG_DIR)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for results_dir in results_dirs:  # what writers killed mid-write left behind (never a live writer's file)
        for path in sweep_stale_temporaries(results_dir):
            print(f"removed {path}: a temporary file whose writer died", file=sys.stderr)
    run_config()


if __name__ == "__main__":
    main()
