"""Faults injected on purpose: workers killed at random moments, two sweepers on one PostgreSQL database, storages
that cannot be used. Afterwards nothing is lost or done twice: every trial number once per study, every final once
per seed, every record file parses, no temporary file is left, and the report builds.

The long loop (ten kills) is marked slow (``make test-slow``); one kill runs in the default suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import REPO, TINY

from harness import records
from harness.storage import counted_trials, logical_number, retried_number

HARNESS_RUN = [sys.executable, "-m", "harness.cli"]
# Two cells, four trials each, one final seed, two joblib workers; heartbeats every second, silent for three is dead.
STUDY = [
    *TINY, "budget.max_steps=20", "budget.eval_steps=10", "hydra/sweeper=study", "task=toy_sentiment",
    "hydra.sweeper.grid={method:'lora,ia3'}", "hydra.sweeper.n_trials=4", "seed=0",
    "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3", "hydra.sweeper.max_retry=20",
    "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _workers(sweeper: psutil.Process) -> list[psutil.Process]:
    """The sweeper's joblib (loky) worker processes: not its resource tracker."""
    try:
        children = sweeper.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "popen_loky" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def sweep_with_kills(
    results_dir: Path, overrides: list[str], kills: int, seed: int, log: Path, sweeper_every: int = 0
) -> dict[str, int]:
    """Run the sweep, SIGKILL a random worker at random moments (seeded) until ``kills`` were injected, and rerun
    the command until it exits 0 with every kill done: what a user does after a crash. With ``sweeper_every``, every
    so many kills hit the sweeper itself instead: its workers are orphaned, its trials go stale and are retried by
    the rerun once their heartbeats stop."""
    rng = random.Random(seed)
    injected = launches = 0
    seen: set[psutil.Process] = set()  # a killed sweeper's workers live on (orphans): the rerun starts at once
    with log.open("a") as out:
        while launches < kills + 6:
            launches += 1
            process = subprocess.Popen(
                [*HARNESS_RUN, "-m", *overrides, f"results_dir={results_dir}"],
                cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            sweeper = psutil.Process(process.pid)
            moment = time.monotonic() + rng.uniform(1.0, 6.0)
            while process.poll() is None:
                time.sleep(0.05)
                workers = _workers(sweeper)
                seen.update(workers)
                if injected < kills and workers and time.monotonic() >= moment:
                    hit_sweeper = sweeper_every and (injected + 1) % sweeper_every == 0
                    victim = sweeper if hit_sweeper else rng.choice(sorted(workers, key=lambda w: w.pid))
                    try:
                        os.kill(victim.pid, signal.SIGKILL)
                        injected += 1
                        what = "sweeper" if hit_sweeper else "worker"
                        out.write(f"\n### fault injection: SIGKILL {what} {victim.pid} (kill {injected})\n")
                        out.flush()
                    except ProcessLookupError:
                        pass
                    moment = time.monotonic() + rng.uniform(1.0, 6.0)
            if process.returncode == 0 and injected >= kills:
                _stop(seen)
                return {"kills": injected, "launches": launches}
    _stop(seen)
    raise AssertionError(f"the sweep did not complete after {launches} launches; see {log}")


def _stop(processes: set[psutil.Process]) -> None:
    """Idle orphans of a killed sweeper wait for work that never comes: end them with the test."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


def check_nothing_lost(results_dir: Path, storage: str, seeds: tuple[int, ...] = (0,), n_trials: int = 4) -> dict:
    """The invariants after faults; returns the figures (trials, attempts, retries, records lost, duplicates)."""
    figures = {"studies": 0, "attempts": 0, "retries": 0, "records_lost": 0, "duplicate_trials": 0}
    trainings = _trainings_completed(results_dir)
    trial_records: dict[tuple[str, int], list[dict]] = {}
    finals: dict[tuple[str, int], list[dict]] = {}
    for path in sorted(records.runs_dir(results_dir).glob("*.json")):
        record = json.loads(path.read_text())  # every record file parses
        key = (record["tuning"]["study"], record["tuning"]["trial"] if record["role"] == "trial" else record["seed"])
        (trial_records if record["role"] == "trial" else finals).setdefault(key, []).append(record)
    for name in optuna.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counted = counted_trials(trials)
        assert len(counted) == n_trials and all(t.state.is_finished() for t in trials), name
        numbers = [logical_number(t) for t in counted]
        assert len(numbers) == len(set(numbers)), f"{name}: a trial number twice: {numbers}"
        # Lost: a counted trial without its record (killed and never completed, or its record gone). Duplicated: a
        # trial trained to completion more than once (two records can't exist: a retry has its first attempt's
        # run_id, so a second training would overwrite the file; the jobs' logs say how often each one finished).
        figures["records_lost"] += sum((name, logical_number(t)) not in trial_records for t in counted)
        assert all(t.state.name in ("COMPLETE", "PRUNED") for t in counted), f"{name}: a counted trial failed"
        method = study.user_attrs["cell"]["method"]
        done = [trainings.get((method, logical_number(t)), 0) for t in counted]
        figures["duplicate_trials"] += sum(count > 1 for count in done)
        assert all(count >= 1 for count in done), f"{name}: a trial with a record but no finished job: {trainings}"
        for seed in seeds:
            assert [r["status"] for r in finals.get((name, seed), [])] == ["success"], (name, seed)
        figures["studies"] += 1
        figures["attempts"] += len(trials)
        figures["retries"] += sum(retried_number(t) is not None for t in trials)
    for summary in sorted((results_dir / "studies").glob("*.json")):
        json.loads(summary.read_text())
    leftovers = [p for p in results_dir.rglob("*.tmp")]
    assert not leftovers, leftovers
    return figures


SUMMARY_LINE = re.compile(r"\] - (?:\w+\+)?(\w+) on \S+ \(.*\) \[trial (\d+)\]: (?:success|pruned|failed),")


def _trainings_completed(results_dir: Path) -> dict[tuple[str, int], int]:
    """How many times each (method, trial) ran to its end, from the summary line each job logs when it finishes
    (a job that skips a recorded run logs none)."""
    counts: dict[tuple[str, int], int] = {}
    for log in (results_dir / "hydra" / "multirun").glob("*/*/*.log"):
        for method, trial in SUMMARY_LINE.findall(log.read_text(errors="replace")):
            counts[(method, int(trial))] = counts.get((method, int(trial)), 0) + 1
    return counts


def _report_builds(results_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "harness.report.cli", str(results_dir), "--formats", "md"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (results_dir / "report" / "report.md").is_file()


@pytest.mark.parametrize(
    "kills", [pytest.param(1, id="one_kill"), pytest.param(10, id="ten_kills", marks=pytest.mark.slow)]
)
def test_workers_killed_at_random_moments_lose_nothing_and_run_nothing_twice(tmp_path, kills):
    results_dir = tmp_path / "results"
    # Among ten kills, every fourth hits the sweeper itself (two of ten).
    run = sweep_with_kills(
        results_dir, STUDY, kills, seed=14, log=tmp_path / "sweep.log", sweeper_every=4 if kills > 1 else 0
    )
    figures = check_nothing_lost(results_dir, f"sqlite:///{results_dir / 'optuna.db'}")
    _report_builds(results_dir)
    print(f"fault injection: {json.dumps({**run, **figures})}")
    assert run["kills"] == kills and figures["studies"] == 2
    assert figures["records_lost"] == 0 and figures["duplicate_trials"] == 0
    assert figures["retries"] >= 1  # a killed worker's trial came back with its parameters


def test_two_sweepers_with_two_workers_each_share_one_postgresql_database(tmp_path, postgres_cluster):
    """Two sweeps started together on one PostgreSQL database, each with two joblib workers: each trial is run
    once (no record twice, no trial number twice), the studies count n_trials, both sweeps finish."""
    url = postgres_cluster.create_database()
    results_dir = tmp_path / "results"
    command = [*HARNESS_RUN, "-m", *STUDY, f"hydra.sweeper.storage='{url}'", f"results_dir={results_dir}"]
    logs = [(tmp_path / f"sweeper{i}.log").open("w") for i in range(2)]
    sweepers = [
        subprocess.Popen(command, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT) for log in logs
    ]  # fmt: skip
    for sweeper in sweepers:
        sweeper.wait(timeout=600)
    for log in logs:
        log.close()
    assert [s.returncode for s in sweepers] == [0, 0], (tmp_path / "sweeper0.log").read_text()[-3000:]
    figures = check_nothing_lost(results_dir, url)
    assert figures["records_lost"] == 0 and figures["duplicate_trials"] == 0
    launched = [json.loads(p.read_text())["tuning"] for p in records.runs_dir(results_dir).glob("*.json")]
    per_study = {}
    for tuning in launched:
        per_study.setdefault(tuning["study"], []).append(tuning["trial"])
    assert all(len(trials) >= 4 for trials in per_study.values())  # 4 trials + 1 final per cell, none twice
    texts = [(tmp_path / f"sweeper{i}.log").read_text() for i in range(2)]
    assert all("Joblib.Parallel(n_jobs=2" in text for text in texts)
    assert all(" trial " in text and ": success" in text for text in texts), "one sweeper ran no trial"


def test_a_locked_sqlite_file_is_one_line_before_anything_trains(tmp_path):
    """Another process holds the study database's write lock: one line naming the file, exit 2, nothing run."""
    import sqlite3

    database = tmp_path / "optuna.db"
    sqlite3.connect(database).execute("create table held (x)").connection.commit()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sqlite3,time; c=sqlite3.connect('{database}'); c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        result = subprocess.run(
            [*HARNESS_RUN, "-m", *STUDY, f"hydra.sweeper.storage=sqlite:///{database}", f"results_dir={tmp_path / 'r'}"],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.kill()
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: hydra.sweeper.storage: {database}: locked by another process (waited 3 s); stop that process or use another file"
    ]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("results_dir=/proc/self", "error: results_dir: /proc/self is not writable"),  # read-only, even for root
        ("results_dir=/proc/self/harness/results", "error: results_dir: /proc/self/harness/results cannot be made"),
        (
            "hydra.sweeper.storage=postgresql+psycopg://harness@127.0.0.1:9/optuna",
            "error: hydra.sweeper.storage: cannot connect to",
        ),
    ],
)
def test_an_unusable_results_folder_or_database_is_one_line_before_anything_trains(tmp_path, override, message):
    result = subprocess.run(
        [*HARNESS_RUN, "-m", *STUDY, f"results_dir={tmp_path / 'r'}", override],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
    assert not (tmp_path / "r").exists()
