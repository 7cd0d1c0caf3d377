"""What a person watching the terminal sees: a progress bar per run, a progress line per step of a sweep.

Both are display only: nothing here enters a run record. The run's bar is
tqdm's (the Trainer's own is off: its total is the step count alone, and a run
bounded by tokens or seconds would show a billion steps to go); the sweep's
line is a logging line, so it lands in the console and in every log handler
Hydra configured.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

log = logging.getLogger("harness.study")

# The budget's stop rules beside steps, as the run's spending names them, with the unit each is shown in.
UNITS = {"train_tokens": "tokens", "seconds": "s"}
BAR_FORMAT = "{desc}: {percentage:3.0f}% of budget |{bar}| [{elapsed}<{remaining}{postfix}]"  # tqdm prefixes ", "


def clock(seconds: float) -> str:
    """``HH:MM:SS``; hours run past 24 rather than roll over into days."""
    whole = int(round(seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class RunBar:
    """One run's progress bar, on stderr when it is a terminal (tqdm's own rule) and only in the process that
    a person launched: a rank other than 0, or a launcher's worker process (joblib), would draw over it.

    The bar fills with the share of the budget spent by the rule furthest along: steps, non-padding training
    tokens or training seconds (evaluation excluded, as the budget's clock excludes it), whichever the budget
    sets. Each share grows about linearly from zero, so the rule furthest along now is the one that will stop
    the run, and tqdm's rate over that share gives an honest time to the stop, evaluations included (they
    recur). The text beside the bar names every bound rule's spending against its limit.

    While the bar is shown, console log lines go through ``tqdm.write`` (tqdm's own redirect), so they print
    above it instead of through it.
    """

    def __init__(self, limits: dict[str, float | None], file: TextIO | None = None, label: str = "train") -> None:
        self.limits = {rule: float(value) for rule, value in limits.items() if value}
        self.file, self.label = file, label
        self.bar: Any = None
        self._redirect: Any = None

    def open(self, main_process: bool = True) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.close()
        if not main_process or multiprocessing.current_process().name != "MainProcess":
            return
        bar = tqdm(total=100.0, desc=self.label, file=self.file or sys.stderr, disable=None, bar_format=BAR_FORMAT)
        if bar.disable:
            return
        self.bar = bar
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()

    def update(self, spent: dict[str, float]) -> None:
        """Move the bar to what ``spent`` says (the rules' figures so far)."""
        if self.bar is None:
            return
        self.bar.set_postfix_str(self.describe(spent), refresh=False)
        self.bar.update(max(0.0, self.percent(spent) - self.bar.n))

    def close(self, spent: dict[str, float] | None = None) -> None:
        """Leave the bar at its last figures and give the console back; safe to call twice (a run that raised
        mid-training is closed by the objective's ``finally``)."""
        if self.bar is not None:
            if spent is not None:
                self.update(spent)
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            redirect, self._redirect = self._redirect, None
            redirect.__exit__(None, None, None)

    def percent(self, spent: dict[str, float]) -> float:
        """The budget spent, in percent, by the rule furthest along (100 once any rule reached its limit)."""
        shares = [spent.get(rule, 0.0) / limit for rule, limit in self.limits.items()]
        return 100.0 * min(1.0, max(shares, default=0.0))

    def describe(self, spent: dict[str, float]) -> str:
        """``step 12/120`` or, bounded by tokens and seconds, ``step 12, 3,072/10,000 tokens, 41/60 s``: the
        step count always, and every bound rule against its limit (seconds of training, evaluation excluded)."""
        steps = f"step {int(spent.get('steps', 0))}"
        parts = [f"{steps}/{self.limits['steps']:.0f}" if "steps" in self.limits else steps]
        for rule, unit in UNITS.items():
            if rule in self.limits:
                parts.append(f"{spent.get(rule, 0.0):,.0f}/{self.limits[rule]:,.0f} {unit}")
        return ", ".join(parts)


@dataclass
class SweepProgress:
    """Where a study sweep stands, logged as one line: ``cell k/K, trial t/T, final s/S, elapsed HH:MM:SS,
    ETA HH:MM:SS``.

    ``t`` counts the cell's finished trials in its study (those an earlier or another sweeper ran included),
    ``s`` the finals that returned. The ETA is the mean wall time per job this sweep ran (its elapsed time over
    the jobs that ran in it, so parallel workers count as they help) times the jobs left: each cell's trials not
    yet finished, read from the storage when the sweep starts and as the cell runs, and its finals. A job that
    returned an earlier record (its run recorded before this sweep started, so skipped in seconds) or whose
    worker died (run again later) adds its time to the elapsed time but is no job run: counted as one, a
    resumed sweep's skipped finals made the estimate far too low. ``ETA –`` until a job ran (``00:00:00`` once
    nothing is left).
    """

    trials_left: list[int]  # per cell: trials still to finish
    n_trials: int
    n_finals: int
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))  # wall clock, as records say
    cell: int = 0  # index of the cell running
    trials: int = 0  # its finished trials
    finals: int = 0  # its finals that returned
    jobs_done: int = 0  # jobs that ran in this sweep, every cell

    def enter(self, cell: int, finished_trials: int) -> None:
        self.cell, self.finals = cell, 0
        self._trials(finished_trials)
        log.info("%s", self.line())

    def trials_finished(self, ran: int, finished_trials: int) -> None:
        """``ran`` of the jobs just returned ran in this sweep; the cell's study counts ``finished_trials``."""
        self.jobs_done += ran
        self._trials(finished_trials)
        log.info("%s", self.line())

    def finals_finished(self, ran: int, finals: int) -> None:
        self.jobs_done += ran
        self.finals = finals
        log.info("%s", self.line())

    def _trials(self, finished: int) -> None:
        self.trials = finished
        self.trials_left[self.cell] = max(0, self.n_trials - finished)

    @property
    def jobs_left(self) -> int:
        later = len(self.trials_left) - self.cell - 1
        return sum(self.trials_left[self.cell :]) + self.n_finals - self.finals + later * self.n_finals

    def ran(self, result: Any) -> bool:
        """Whether a job's result is from a run in this sweep: a record started since the sweep started, or
        None (the job raised, after spending its time). An earlier record (a skipped run), or a marker of a
        job whose worker died, is not."""
        if result is None:
            return True
        if not isinstance(result, dict):
            return False
        started = result.get("started_at")
        return started is None or datetime.fromisoformat(started) >= self.started_at

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.started
        left = self.jobs_left
        eta = clock(elapsed / self.jobs_done * left) if self.jobs_done else "–" if left else clock(0)
        return (
            f"cell {self.cell + 1}/{len(self.trials_left)}, trial {self.trials}/{self.n_trials}, "
            f"final {self.finals}/{self.n_finals}, elapsed {clock(elapsed)}, ETA {eta}"
        )
