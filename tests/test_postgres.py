"""Optuna studies on a real PostgreSQL server (the throwaway cluster of tests/pg_cluster.py).

Shared trial numbering across processes, Optuna's heartbeat (a killed worker's trial is failed after the
grace period and retried as a WAITING copy), and how quickly an unreachable server is reported. The worker
functions run in spawned processes, so this module imports nothing heavy at its top (harness.study pulls
in transformers).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import optuna
import pytest
from pg_cluster import require_driver

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the heartbeat API's
HEARTBEAT = {"heartbeat_interval": 1, "grace_period": 2}  # seconds; Optuna wants whole numbers


def heartbeat_storage(url: str, **extra) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url, **HEARTBEAT, **extra)


def optimize_worker(url: str, study_name: str, n_trials: int, barrier) -> None:
    """One of several processes that share a study: each asks, runs and tells its own trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=heartbeat_storage(url))
    barrier.wait(timeout=60)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        time.sleep(0.02)  # long enough for the two workers' asks and tells to interleave
        return x * x

    study.optimize(objective, n_trials=n_trials)


def hanging_worker(url: str, study_name: str, started) -> None:
    """Asks one trial with heartbeats on, records a heartbeat, says so, and hangs (to be killed)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = heartbeat_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        storage.record_heartbeat(trial._trial_id)  # the heartbeat thread records one too; this one is sure
        started.put((trial.number, trial.params))
        time.sleep(600)
        return x

    study.optimize(objective, n_trials=1)


def test_concurrent_workers_share_trial_numbers(postgres_url):
    from harness.study import open_storage

    study = optuna.create_study(study_name="concurrent", storage=open_storage(postgres_url), direction="minimize")
    context = multiprocessing.get_context("spawn")  # fresh processes: no inherited database connections
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=optimize_worker, args=(postgres_url, "concurrent", 10, barrier)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]

    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(20))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["x"] for t in trials}) == 20


def test_killed_worker_trial_is_failed_and_retried(postgres_url):
    from harness.study import open_storage

    optuna.create_study(study_name="stale", storage=open_storage(postgres_url))
    context = multiprocessing.get_context("spawn")
    started = context.Queue()
    worker = context.Process(target=hanging_worker, args=(postgres_url, "stale", started))
    worker.start()
    try:
        number, params = started.get(timeout=60)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=30)
    assert worker.exitcode == -signal.SIGKILL

    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    storage = heartbeat_storage(postgres_url, heartbeat_stale_trial_callback=retry)
    study = optuna.load_study(study_name="stale", storage=storage)
    killed_at = time.monotonic()
    optuna.storages.fail_stale_trials(study)  # within the grace period: the trial still counts as running
    assert study.trials[number].state == optuna.trial.TrialState.RUNNING
    while study.trials[number].state == optuna.trial.TrialState.RUNNING:
        assert time.monotonic() - killed_at < 30, "the killed worker's trial was never failed"
        time.sleep(0.25)
        optuna.storages.fail_stale_trials(study)

    failed, copy = study.trials
    assert (failed.number, failed.state) == (number, optuna.trial.TrialState.FAIL)
    assert copy.state == optuna.trial.TrialState.WAITING
    assert copy.params == params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(copy) == number
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(copy) == [number]

    # The next optimize runs the WAITING copy first, with the failed trial's parameters.
    study.optimize(lambda trial: trial.suggest_float("x", -1.0, 1.0), n_trials=1)
    assert study.trials[copy.number].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[copy.number].params == params


def test_unreachable_server_fails_quickly():
    """Nothing listens on port 1: connection refused, reported at once as one line naming the key and URL."""
    require_driver()
    from harness.config import ConfigError
    from harness.storage import open_storage

    begin = time.monotonic()
    with pytest.raises(
        ConfigError,
        match=r"hydra\.sweeper\.storage: cannot open postgresql\+psycopg://u@127\.0\.0\.1:1/db: .*Connection refused",
    ):
        open_storage("postgresql+psycopg://u@127.0.0.1:1/db")
    assert time.monotonic() - begin < 10
