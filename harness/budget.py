"""Budget stage: the stop rule every method obeys, and what the run spent.

Steps are enforced by the Trainer's own ``max_steps``; training tokens and
wall seconds by :class:`BudgetCallback`, which also keeps the tally of what
was actually spent (steps, samples, non-padding tokens, seconds) for the
run record. The learning curve is collected here too, from the Trainer's logs.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from harness import distributed, progress

# Training-side logs kept in the learning curve besides the loss: what RL objectives optimise and pay.
CURVE_TRAIN_KEYS = ("score", "reward", "kl", "clip_fraction", "response_length", "completions/mean_length")
# When only tokens or seconds bound a run, the Trainer still needs a step
# count; this one is never reached, and the schedule is constant (see run.py).
UNBOUNDED_STEPS = 10**9
log = logging.getLogger("harness")


def sequence_length(cfg: DictConfig) -> int:
    """Tokens per example: the task's own length where it sets one (a chat prompt plus its answer does
    not fit a classification budget's 64 tokens), else the budget's. The same for every method on a task."""
    return int(cfg.task.get("max_seq_length") or cfg.budget.max_seq_length)


def trainer_max_steps(budget: DictConfig) -> int:
    return int(budget.max_steps) if budget.get("max_steps") else UNBOUNDED_STEPS


def micro_batch_size(budget: DictConfig, world_size: int = 1) -> int:
    """Examples per forward and backward pass: ``budget.micro_batch_size``, else a rank's whole share of the batch.

    It bounds peak memory and nothing else: gradients are accumulated over
    ``budget.batch_size / (world_size × micro_batch_size)`` passes, so an
    optimizer step (one budget step) still sees ``budget.batch_size`` examples,
    ``batch_size / world_size`` on each of the run's processes
    (:mod:`harness.distributed`). A micro-batch larger than a rank's share is
    that share.
    """
    share = int(budget.batch_size) // world_size
    return min(int(budget.get("micro_batch_size") or share), share)


def accumulation_steps(budget: DictConfig, world_size: int = 1) -> int:
    """Forward and backward passes per optimizer step on each process (config.validate_budget and
    config.validate_distributed check that the divisions are exact)."""
    return int(budget.batch_size) // world_size // micro_batch_size(budget, world_size)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss: the run is failed, not reported."""


class BudgetCallback(TrainerCallback):
    """Stops training on the token or time budget and records what was spent; shows it on a terminal as a
    progress bar (``progress``, closed by the objective's ``finally`` too, should training raise)."""

    def __init__(self, budget: DictConfig):
        self.max_train_tokens = budget.get("max_train_tokens")
        self.max_time_s = budget.get("max_time_s")
        limits = {"steps": budget.get("max_steps"), "train_tokens": self.max_train_tokens, "seconds": self.max_time_s}
        self.progress = progress.RunBar(limits)
        self.stop_reason = "max_steps"
        self.train_seconds = 0.0
        self.eval_seconds = 0.0  # periodic evaluation windows inside train() (see paused): not charged
        self.learning_curve: list[dict[str, Any]] = []
        self._start = 0.0
        self._training = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._start = time.perf_counter()
        self._training = True
        self.progress.open(main_process=distributed.is_main_process())

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        elapsed = self._train_elapsed()
        if self.max_train_tokens and state.num_input_tokens_seen >= self.max_train_tokens:
            self.stop_reason, control.should_training_stop = "max_train_tokens", True
        elif self.max_time_s and distributed.from_main(elapsed >= self.max_time_s):
            # rank 0's clock decides for every rank: ranks that stopped apart would wait on each other for ever
            self.stop_reason, control.should_training_stop = "max_time_s", True
        self.progress.update(self._spent_so_far(state, elapsed))
        return control

    def _train_elapsed(self) -> float:
        """Training seconds so far: evaluation windows are not charged."""
        return time.perf_counter() - self._start - self.eval_seconds

    @staticmethod
    def _spent_so_far(state: TrainerState, seconds: float) -> dict[str, float]:
        return {"steps": state.global_step, "train_tokens": state.num_input_tokens_seen, "seconds": seconds}

    @contextmanager
    def paused(self):
        """Stop the training clock for a block (an evaluation window, its memory-meter transitions included):
        everything an evaluation costs, not only the Trainer's ``eval_runtime``, stays out of training time."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._training:
                self.eval_seconds += time.perf_counter() - started

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        logs = logs or {}
        if not self._training:
            self._end_curve_at_final_evaluation(state, logs)
            return
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLossError(f"training loss is {loss} at step {state.global_step}")
        point = {k: v for k, v in logs.items() if k == "loss" or k in CURVE_TRAIN_KEYS or _is_eval_metric(k)}
        if point:
            self.learning_curve.append({"step": state.global_step, **point})
            log.info("step %s: %s", _progress(state), ", ".join(f"{k} {_short(v)}" for k, v in point.items()))

    def _end_curve_at_final_evaluation(self, state: TrainerState, logs: dict[str, Any]) -> None:
        """A time or token stop rarely lands on an evaluation step, so the curve would end before the run
        did; the validation pass after training (its figures are the record's metrics) closes it. Test
        metrics (``test_`` keys) never enter the curve."""
        point = {k: v for k, v in logs.items() if _is_eval_metric(k)}
        evaluated_steps = {p["step"] for p in self.learning_curve if any(map(_is_eval_metric, p))}
        if point and state.global_step not in evaluated_steps:
            self.learning_curve.append({"step": state.global_step, **point})

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.train_seconds = self._train_elapsed()
        self._training = False
        self.progress.close(self._spent_so_far(state, self.train_seconds))

    def spent(self, state: TrainerState) -> dict[str, Any]:
        """Steps, non-padding tokens and seconds actually consumed, whichever rule stopped it."""
        return {
            "steps": state.global_step,
            "train_tokens": int(state.num_input_tokens_seen),
            "seconds": self.train_seconds,
            "eval_seconds_during_training": self.eval_seconds,
            "stop_reason": self.stop_reason,
        }


def _progress(state: TrainerState) -> str:
    """``12/150`` (or ``12`` when only tokens or seconds bound the run): minutes-long CPU runs show where they are."""
    bounded = state.max_steps and state.max_steps < UNBOUNDED_STEPS
    return f"{state.global_step}/{state.max_steps}" if bounded else str(state.global_step)


def _is_eval_metric(key: str) -> bool:
    return key.startswith("eval_") and not key.endswith(("_runtime", "_per_second"))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class TrialReporter(TrainerCallback):
    """Reports each validation evaluation during training to the Optuna trial and stops a pruned one.

    Step 0 (the untrained model, identical for every trial) is not reported.
    Evaluations after training (the record's final metrics) are not either.
    """

    def __init__(self, trial, metric: str):
        self.trial = trial
        self.metric_key = f"eval_{metric}"
        self.pruned_at_step: int | None = None
        self._training = False

    @property
    def pruned(self) -> bool:
        return self.pruned_at_step is not None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._training = True

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._training = False

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kw):
        value = (metrics or {}).get(self.metric_key)
        if not self._training or state.global_step == 0 or value is None or not math.isfinite(value):
            return control
        if distributed.from_main(self._report(float(value), state.global_step)):
            self.pruned_at_step = state.global_step
            control.should_training_stop = True
        return control

    def _report(self, value: float, step: int) -> bool:
        """Report to the trial and ask the pruner; on several processes rank 0 alone reports, and every rank
        takes its answer (every rank sees the same gathered metrics, and all must stop together)."""
        if not distributed.is_main_process():
            return False
        self.trial.report(value, step)
        return self.trial.should_prune()
