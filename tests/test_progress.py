"""Watching a study: the sweep's progress line, each run's progress bar on a terminal, optuna-dashboard on the DB.

One tiny study (2 cells × 2 trials × 2 final seeds on the tiny BERT) runs once under a pseudo-terminal, as a
person at a terminal would start it; its output and its Optuna storage serve every end-to-end check here.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import REPO, TINY
from test_sweep import FakeLauncher, make_sweep, run_sweep

from harness.progress import RunBar, SweepProgress, clock
from harness.sweep import LOST

CELLS, TRIALS, FINALS = 2, 2, 2
STUDY = ["hydra/sweeper=study", "task=toy_sentiment", "method=lora,ia3", f"hydra.sweeper.n_trials={TRIALS}", "seed=0,1"]
LINE = re.compile(
    r"cell (\d+)/(\d+), trial (\d+)/(\d+), final (\d+)/(\d+), elapsed (\d\d:\d\d:\d\d), ETA (\d\d:\d\d:\d\d|–)$"
)
BAR = re.compile(r"train: +(\d+)% of budget \|[^|]*\| \[[\d:]+<[\d:?]+, step (\d+)/(\d+)\]")


def run_in_terminal(command: list[str], timeout: float = 300, columns: int = 160) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as its stdin, stdout and stderr (``columns`` wide) and return its
    exit status and everything it wrote, as a terminal received it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
        else:
            process.kill()
            process.wait(timeout=30)
            shown = b"".join(chunks).decode(errors="replace")
            raise AssertionError(f"{command} ran past {timeout} s; the terminal's last output:\n{shown[-3000:]}")
    finally:
        os.close(master)
    return process.wait(timeout=30), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def terminal_study(tmp_path_factory) -> tuple[Path, str]:
    """The tiny study run once at a terminal: its results folder and what the terminal showed."""
    results = tmp_path_factory.mktemp("terminal_study")
    command = [sys.executable, "-m", "harness.cli", "-m", *TINY, *STUDY, f"results_dir={results}"]
    status, shown = run_in_terminal(command)
    assert status == 0, shown[-3000:]
    return results, shown


def _lines(shown: str) -> list[str]:
    """What stays on screen line by line: a carriage return starts its line over."""
    return [line.rstrip("\r").split("\r")[-1] for line in shown.split("\n")]


def test_the_sweep_logs_cell_trial_final_elapsed_and_eta_as_it_goes(terminal_study):
    _, shown = terminal_study
    found = [LINE.search(line.rstrip("\r")) for line in shown.split("\n")]
    steps = [tuple(m.groups()) for m in found if m]
    # per cell: on entering it, after each of its trials, after each final
    assert len(steps) == CELLS * (1 + TRIALS + FINALS), steps
    counts = [tuple(int(v) for v in step[:6]) for step in steps]
    expected = []
    for cell in range(1, CELLS + 1):
        expected.append((cell, CELLS, 0, TRIALS, 0, FINALS))
        expected += [(cell, CELLS, t, TRIALS, 0, FINALS) for t in range(1, TRIALS + 1)]
        expected += [(cell, CELLS, TRIALS, TRIALS, s, FINALS) for s in range(1, FINALS + 1)]
    assert counts == expected
    assert steps[0][7] == "–"  # no job finished yet: no estimate
    assert all(step[7] != "–" for step in steps[1:])
    assert steps[-1][7] == "00:00:00"  # nothing left
    elapsed = [sum(int(part) * 60**i for i, part in enumerate(reversed(step[6].split(":")))) for step in steps]
    assert elapsed == sorted(elapsed)


def test_each_run_draws_a_budget_bar_on_a_terminal_and_log_lines_print_above_it(terminal_study):
    _, shown = terminal_study
    # every run of the study (8: trials and finals) leaves its full bar; the budget here is 2 steps
    last_frames = [line for line in _lines(shown) if BAR.search(line)]
    assert len(last_frames) == CELLS * (TRIALS + FINALS), last_frames
    assert all(BAR.search(line).groups() == ("100", "2", "2") for line in last_frames)
    # the learning-curve lines reach the terminal whole, on lines of their own
    curve = [line for line in _lines(shown) if re.search(r"\[harness\]\[INFO\] - step \d/2: ", line)]
    assert len(curve) >= CELLS * (TRIALS + FINALS) * 3 and all(line.startswith("[") for line in curve)


def test_a_run_bar_is_drawn_only_on_a_terminal_and_follows_the_rule_furthest_along():
    # a file that is not a terminal (a log, a pipe): tqdm draws nothing, and logging is left alone
    quiet = io.StringIO()
    bar = RunBar({"steps": 10}, file=quiet)
    bar.open()
    bar.update({"steps": 5})
    bar.close({"steps": 10})
    assert bar.bar is None and quiet.getvalue() == ""
    # tokens and seconds as well as steps: the bar shows the share of the rule that will stop the run first
    rules = RunBar({"steps": None, "train_tokens": 10_000, "seconds": 60})
    assert rules.percent({"steps": 3, "train_tokens": 2_500, "seconds": 30}) == 50.0
    assert rules.percent({"steps": 9, "train_tokens": 9_000, "seconds": 30}) == 90.0
    assert rules.percent({"steps": 9, "train_tokens": 12_000, "seconds": 30}) == 100.0
    assert (
        rules.describe({"steps": 9, "train_tokens": 9_000, "seconds": 30.4}) == "step 9, 9,000/10,000 tokens, 30/60 s"
    )
    assert RunBar({"steps": 120}).describe({"steps": 12, "train_tokens": 4_000, "seconds": 2}) == "step 12/120"


def test_the_eta_is_the_mean_time_per_finished_job_times_the_jobs_left():
    progress = SweepProgress(trials_left=[4, 4, 4], n_trials=4, n_finals=2, started=0.0)
    progress.enter(0, 0)
    assert progress.line(now=0.0).endswith("ETA –")
    progress.trials_finished(2, 2)  # 2 jobs in 20 s: 10 s each; left: 2 trials + 2 finals here, 6 in each other cell
    assert progress.jobs_left == 16
    assert progress.line(now=20.0) == "cell 1/3, trial 2/4, final 0/2, elapsed 00:00:20, ETA 00:02:40"
    progress.enter(1, 3)  # a resumed cell: 3 of its trials finished before this sweep
    assert progress.jobs_left == 1 + 2 + 6
    assert clock(90_061) == "25:01:01"
    done = SweepProgress(trials_left=[0], n_trials=4, n_finals=2, started=0.0)
    done.enter(0, 4)
    done.finals_finished(0, 2)  # a resumed sweep with nothing left to run, its finals skipped
    assert done.line(now=5.0).endswith("ETA 00:00:00")


class WatchingLauncher(FakeLauncher):
    """A fake launcher that notes, before each batch, how many jobs the sweep counts as run and the line it
    would log a minute into the sweep."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runner, self.seen = None, []

    def __call__(self, batch):
        progress = self.runner.progress
        self.seen.append((progress.jobs_done, progress.line(now=progress.started + 60)))
        return super().__call__(batch)


def test_the_eta_counts_only_jobs_that_ran_in_this_sweep(tmp_path):
    """A resumed sweep: its first cell was tuned and finalised before (its finals return their earlier records in
    no time), and the second cell's first trial loses its worker once. Only the retried trial and the finals of
    the second cell ran; counted as jobs run, the skipped finals and the lost trial divided the time by 5."""
    recorded: dict[str, dict] = {}
    run_sweep(tmp_path, FakeLauncher(recorded=recorded), n_trials=1)  # the lora cell, done before
    lost = []

    def loses_the_first_ia3_trial(job):
        if job["role"] == "trial" and not lost:
            lost.append(job)
            return LOST
        return {"status": "success", "validation": 0.5}

    launch = WatchingLauncher(loses_the_first_ia3_trial, recorded=recorded)
    launch.runner = runner = make_sweep(tmp_path, launch, n_trials=1)
    runner.run(runner.plan([([f"method={m}"], {"method": m}) for m in ("lora", "ia3")]))
    roles = [(job["method"], job["role"]) for batch in launch.batches for job in batch]
    assert roles == [("lora", "final")] * 2 + [("ia3", "trial")] * 2 + [("ia3", "final")] * 2
    assert [done for done, _ in launch.seen] == [0, 0, 0, 0, 1, 2] and runner.progress.jobs_done == 3
    # before the second cell's first final: 1 job ran in 60 s, 2 finals left
    assert launch.seen[4][1] == "cell 2/2, trial 1/1, final 0/2, elapsed 00:01:00, ETA 00:02:00"


def test_a_resumed_sweep_counts_the_trials_already_in_its_storage(tmp_path, caplog):
    caplog.set_level("INFO", logger="harness.study")
    run_sweep(tmp_path, FakeLauncher(), n_trials=2, width=2)  # two jobs at a time: the trials, then the finals
    first = [m.groups()[:6] for m in map(LINE.search, caplog.messages) if m]
    assert first == [("1", "1", "0", "2", "0", "2"), ("1", "1", "2", "2", "0", "2"), ("1", "1", "2", "2", "2", "2")]
    caplog.clear()
    run_sweep(tmp_path, FakeLauncher(), n_trials=3, width=2)  # the same study, topped up to 3 trials
    again = [m.groups() for m in map(LINE.search, caplog.messages) if m]
    assert again[0][:6] == ("1", "1", "2", "3", "0", "2") and again[0][7] == "–"
    assert [step[:6] for step in again[1:]] == [("1", "1", "3", "3", "0", "2"), ("1", "1", "3", "3", "2", "2")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_dashboard(url: str, errors: Path) -> tuple[subprocess.Popen, str]:
    """optuna-dashboard on ``url`` at a free port, answering: the server and its studies API. Its stderr goes to
    the file ``errors`` (a pipe nobody reads could fill and block it). A port another process took between
    _free_port and the server's bind makes the server exit: it is started once more on another port."""
    command = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or "optuna-dashboard"
    for attempt in range(2):
        port = _free_port()
        with errors.open("wb") as stderr:
            server = subprocess.Popen(
                [command, url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        base, deadline = f"http://127.0.0.1:{port}/api/studies", time.monotonic() + 30
        while server.poll() is None and time.monotonic() < deadline:
            try:
                _get(base)
                return server, base
            except OSError:
                time.sleep(0.2)
        _stop(server)
        if attempt or server.returncode is None or "address already in use" not in errors.read_text().lower():
            break
    raise AssertionError(
        f"optuna-dashboard did not answer within 30 s (exit status {server.returncode}): {errors.read_text()[-2000:]}"
    )


def _stop(server: subprocess.Popen) -> None:
    """Terminate a server, and kill it if it has not exited 10 s later."""
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_optuna_dashboard_serves_the_studies_of_the_default_storage(terminal_study, tmp_path):
    pytest.importorskip("optuna_dashboard")
    results, _ = terminal_study
    url = f"sqlite:///{results / 'optuna.db'}"  # the sweeper's default: sqlite:///<results_dir>/optuna.db
    names = optuna.get_all_study_names(storage=url)
    studies = {name: optuna.load_study(study_name=name, storage=url) for name in names}
    assert len(studies) == CELLS
    server, base = _serve_dashboard(url, tmp_path / "optuna-dashboard.stderr")
    try:
        listed = _get(base)
        assert {s["study_name"] for s in listed["study_summaries"]} == set(studies)
        for summary in listed["study_summaries"]:
            study = studies[summary["study_name"]]
            detail = _get(f"{base}/{summary['study_id']}?after=0")
            assert [t["number"] for t in detail["trials"]] == [t.number for t in study.trials]
            for shown, trial in zip(detail["trials"], study.trials, strict=True):
                assert shown.get("values") == trial.values
                assert {p["name"] for p in shown["params"]} == set(trial.params)
                # what pruning is fed: each validation evaluation during training (steps 1 and 2 here)
                assert [v["step"] for v in shown["intermediate_values"]] == sorted(trial.intermediate_values)
                assert len(shown["intermediate_values"]) == 2
            importances = _get(f"{base}/{summary['study_id']}/param_importances")["param_importances"]
            assert {p["name"] for p in importances[0]} == set(study.trials[0].params)
    finally:
        _stop(server)
