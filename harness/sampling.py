"""A sampler seeded by the trial's place among its study's new trials, whichever sweeper asks for it.

Seeding each trial's sampler makes a study reproducible and a resumed study
sample what an uninterrupted one would have. The seed must come from the trial
itself, not from the asking sweeper's view of the study: two sweepers sharing
a storage see the same trial count, and seeded by it they would draw the same
parameters twice. So the seed is the trial's number less the attempts before
it that drew nothing of their own (retries of dead workers' trials, surplus
asks): the n-th new trial gets seed ``base + n`` in every history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from harness.storage import SURPLUS, retried_number


def new_trial_index(trials: Sequence[FrozenTrial], number: int) -> int:
    """Trial ``number``'s place among the new trials: retries and surplus asks before it not counted."""
    skipped = sum(
        1 for t in trials if t.number < number and (retried_number(t) is not None or t.user_attrs.get(SURPLUS))
    )
    return number - skipped


class TrialSeededSampler(BaseSampler):
    """Delegates to a sampler built afresh for each trial with seed ``base_seed + new_trial_index``."""

    def __init__(self, build: Callable[[int], BaseSampler], base_seed: int) -> None:
        self._build, self._base_seed = build, base_seed
        self._inner = build(base_seed)

    def before_trial(self, study: Any, trial: FrozenTrial) -> None:
        index = new_trial_index(study.get_trials(deepcopy=False), trial.number)
        self._inner = self._build(self._base_seed + index)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
