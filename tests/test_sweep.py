"""harness.sweep driven by a fake launcher: cells, trials, finals, failures, resume (no Hydra launcher, no model)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import optuna
import pytest
from conftest import TINY, compose_config

from harness import study, sweep
from harness.config import ConfigError
from harness.search import override_value
from harness.storage import Liveness, counted_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
RANDOM = {"_target_": "optuna.samplers.RandomSampler"}
CPU = {"device_type": "cpu", "precision": "fp32"}
# Heartbeats every second, a trial silent for two is dead: a killed sweep's trial is retried within seconds.
FAST = Liveness(interval=1, grace=2)


class FakeLauncher:
    """Returns a canned record per job (``outcome(job)``: a record's fields, None for a job that raised, or
    ``sweep.LOST`` for one whose worker died). Given ``recorded`` (run_id to record, shared by the launchers of
    several sweeps), a job whose run finished before returns its earlier record, as harness-run skips it."""

    def __init__(self, outcome=None, recorded: dict[str, dict] | None = None):
        self.outcome = outcome or (lambda job: {"status": "success", "validation": 0.5})
        self.recorded = recorded
        self.batches: list[list[dict[str, str]]] = []

    @property
    def jobs(self) -> list[dict[str, str]]:
        return [job for batch in self.batches for job in batch]

    def trials(self) -> list[dict[str, str]]:
        return [job for job in self.jobs if job["role"] == "trial"]

    def finals(self) -> list[dict[str, str]]:
        return [job for job in self.jobs if job["role"] == "final"]

    def __call__(self, batch: list[list[str]]) -> list[dict | None]:
        jobs = [dict(o.split("=", 1) for o in overrides) for overrides in batch]
        self.batches.append(jobs)
        return [self._record(job) for job in jobs]

    def _record(self, job: dict[str, str]) -> dict | None:
        fields = self.outcome(job)
        if fields is None or fields == sweep.LOST:
            return fields
        run_id = f"{job['tuning.study']}-{job['role']}-{job['seed']}-{job['tuning.trial']}"
        earlier = (self.recorded or {}).get(run_id)
        if earlier is not None and earlier["status"] in ("success", "pruned"):
            return earlier
        metric = {"validation": fields.get("validation"), "test": fields.get("test", 0.7)}
        record = {"run_id": run_id, "status": fields["status"], "seed": int(job["seed"]), "primary_metric": metric,
                  "identity": fields.get("identity", CPU), "started_at": datetime.now(timezone.utc).isoformat()}  # fmt: skip
        if self.recorded is not None:
            self.recorded[run_id] = record
        return record


def method_values(job: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in job.items() if k.startswith("method.")}


def make_sweep(tmp_path, launch, overrides=(), **settings) -> sweep.Sweep:
    settings = {"seeds": [0, 1], "n_trials": 3, "sampler": RANDOM, "liveness": FAST, **settings}
    base = [*TINY, "task=toy_sentiment", f"results_dir={tmp_path}", *overrides]
    return sweep.Sweep(sweep.Settings(**settings), launch, lambda overrides: compose_config([*base, *overrides]))


def run_sweep(tmp_path, launch, methods=("lora",), overrides=(), **settings) -> tuple[list[sweep.Cell], list[dict]]:
    runner = make_sweep(tmp_path, launch, overrides, **settings)
    cells = runner.plan([([f"method={m}"], {"method": m}) for m in methods])
    return cells, runner.run(cells)


def load(cell: sweep.Cell) -> optuna.Study:
    return optuna.load_study(study_name=cell.study_name, storage=cell.storage_url)


def test_each_cell_runs_n_trials_on_the_tuning_seed_then_the_best_params_on_each_final_seed(tmp_path):
    best_number = 1
    launch = FakeLauncher(lambda job: {"status": "success", "validation": 0.9 if job["tuning.trial"] == "1" else 0.5})
    cells, summaries = run_sweep(tmp_path, launch, methods=("lora", "ia3"), width=2)
    assert [len(b) for b in launch.batches] == [2, 1, 2, 2, 1, 2]  # trials in twos, then the finals
    for cell, summary in zip(cells, summaries, strict=True):
        trials = [j for j in launch.trials() if j["tuning.study"] == override_value(cell.study_name)]
        finals = [j for j in launch.finals() if j["tuning.study"] == override_value(cell.study_name)]
        assert sorted(int(j["tuning.trial"]) for j in trials) == [0, 1, 2] and len(load(cell).trials) == 3
        assert {j["seed"] for j in trials} == {"1000"}
        assert sorted(j["seed"] for j in finals) == ["0", "1"]
        best = next(j for j in trials if j["tuning.trial"] == str(best_number))
        for final in finals:
            assert final["tuning.trial"] == str(best_number) and final["tuning.params"] == best["tuning.params"]
            assert method_values(final) == method_values(best)
        assert summary["best"]["trial"] == best_number and summary["final_seeds"] == [0, 1]
        assert sorted(f["seed"] for f in summary["finals"]) == [0, 1]
        assert json.loads(study.summary_path(tmp_path, cell.study_name).read_text()) == summary
    lora = next(j for j in launch.trials() if "method.r" in j)
    assert int(lora["method.lora_alpha"]) == 2 * int(lora["method.r"])  # derived keys reach the job


def test_a_failed_or_crashed_trial_is_told_failed_and_the_cell_goes_on(tmp_path):
    outcomes = {"0": None, "1": {"status": "failed"}, "2": {"status": "success", "validation": 0.8},
                "3": {"status": "pruned"}, "4": {"status": "success", "validation": float("nan")}}  # fmt: skip
    launch = FakeLauncher(
        lambda job: outcomes[job["tuning.trial"]] if job["role"] == "trial" else {"status": "success"}
    )
    (cell,), (summary,) = run_sweep(tmp_path, launch, n_trials=5)
    states = [t.state for t in load(cell).trials]
    state = optuna.trial.TrialState
    assert states == [state.FAIL, state.FAIL, state.COMPLETE, state.PRUNED, state.FAIL]
    assert summary["pruned_trials"] == [3] and summary["best"]["trial"] == 2
    assert {f["tuning.trial"] for f in launch.finals()} == {"2"} and len(launch.finals()) == 2


def test_a_cell_with_no_completed_trial_launches_no_final(tmp_path):
    launch = FakeLauncher(lambda job: {"status": "failed"})
    (_,), (summary,) = run_sweep(tmp_path, launch)
    assert len(launch.trials()) == 3 and not launch.finals()
    assert summary["best"] is None and summary["finals"] == []


def test_a_trial_from_another_device_is_told_failed_and_cannot_win(tmp_path):
    def outcome(job):
        if job["tuning.trial"] == "1":
            return {"status": "success", "validation": 0.99, "identity": {"device_type": "cuda", "precision": "bf16"}}
        return {"status": "success", "validation": 0.5}

    launch = FakeLauncher(outcome)
    (cell,), (summary,) = run_sweep(tmp_path, launch)
    assert load(cell).trials[1].state == optuna.trial.TrialState.FAIL and summary["best"]["trial"] != 1


def test_a_resumed_sweep_retries_only_the_interrupted_trial_then_tops_up_to_n_trials(tmp_path):
    """A sweep killed during trial 2 leaves it RUNNING; once its heartbeat is silent past the grace period the
    next sweep fails it and runs it again with its parameters and its number, and asks trial 3: the study
    counts 4 trials, in 5 attempts, and samples what an uninterrupted sweep samples."""

    class Killed(Exception):
        pass

    def dies_at_trial_2(job):
        if job["tuning.trial"] == "2":
            raise Killed
        return {"status": "success", "validation": 0.5}

    first = FakeLauncher(dies_at_trial_2)
    with pytest.raises(Killed):
        run_sweep(tmp_path, first, n_trials=4)
    interrupted = first.jobs[-1]
    resumed = FakeLauncher()
    (cell,), (summary,) = run_sweep(tmp_path, resumed, n_trials=4)
    # Trial 2 looks alive until its heartbeat is 2 s old: trial 3 runs meanwhile, then trial 2 again.
    trials = sorted(resumed.trials(), key=lambda job: job["tuning.trial"])
    assert [j["tuning.trial"] for j in trials] == ["2", "3"]  # 0 and 1 finished: not relaunched
    assert method_values(trials[0]) == method_values(interrupted)  # the same trial's parameters again
    assert trials[0]["tuning.trial_id"] != interrupted["tuning.trial_id"]  # as a new attempt in the storage
    assert [t.state.name for t in load(cell).trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert (summary["trials"], summary["attempts"], summary["retries"]) == (4, 5, 1)
    assert summary["states"]["complete"] == 4 and summary["states"]["fail"] == 0

    uninterrupted = FakeLauncher()
    run_sweep(tmp_path / "fresh", uninterrupted, n_trials=4)
    assert [method_values(j) for j in uninterrupted.trials()] == [method_values(j) for j in [*first.jobs, trials[1]]]

    again = FakeLauncher()
    run_sweep(tmp_path, again, n_trials=4)
    assert not again.trials() and len(again.finals()) == 2  # finals relaunched: the run itself skips recorded ones


def test_a_trial_whose_worker_died_is_queued_again_and_counts_once(tmp_path):
    """A launcher that reports a job's worker lost (joblib: TerminatedWorkerError) gets that trial back with its
    parameters and number at once, without waiting for the grace period; a retry counts once toward n_trials."""
    lost_once = set()

    def loses_trial_1_once(job):
        if job["tuning.trial"] == "1" and not lost_once:
            lost_once.add(job["tuning.trial_id"])
            return sweep.LOST
        return {"status": "success", "validation": 0.5 + 0.1 * int(job["tuning.trial"])}

    launch = FakeLauncher(loses_trial_1_once)
    (cell,), (summary,) = run_sweep(tmp_path, launch, n_trials=3)
    # Records carry the first attempt's number; the retry took attempt number 2, so the next trial is 3.
    numbers = [j["tuning.trial"] for j in launch.trials()]
    assert numbers == ["0", "1", "1", "3"] and summary["retries"] == 1
    first, again = [j for j in launch.trials() if j["tuning.trial"] == "1"]
    assert method_values(first) == method_values(again) and first["tuning.trial_id"] != again["tuning.trial_id"]
    assert (summary["trials"], summary["attempts"], summary["states"]["complete"]) == (3, 4, 3)
    assert summary["best"]["trial"] == 3


def test_two_sweepers_on_one_storage_never_run_a_trial_twice(tmp_path):
    """Two sweepers started together on one SQLite storage share the cell's trials: each trial number is launched
    once, the study counts n_trials, and both wait for the other's trials before picking the best one. (Threads
    here; tests/test_faults.py runs two sweeper processes with two workers each on PostgreSQL.)"""
    import threading

    launched: list[str] = []

    def slow(job):
        time.sleep(0.3)
        if job["role"] == "trial":
            launched.append(job["tuning.trial"])
        return {"status": "success", "validation": 0.5}

    summaries, errors = [], []
    sweepers = [make_sweep(tmp_path, FakeLauncher(slow), n_trials=6) for _ in range(2)]
    plans = [
        runner.plan([(["method=lora"], {"method": "lora"})]) for runner in sweepers
    ]  # Hydra composes in one thread

    def sweeper(runner, cells):
        try:
            summaries.append(runner.run(cells)[0])
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=sweeper, args=pair) for pair in zip(sweepers, plans, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(summaries) == 2
    assert sorted(launched) == [str(n) for n in range(6)]  # every trial once, none twice
    drawn = [tuple(sorted(method_values(j).items())) for runner in sweepers for j in runner.launch.trials()]
    assert len(set(drawn)) == 6  # and no two with the same parameters: each trial's sampler has its own seed
    assert all(runner.launch.trials() for runner in sweepers)  # both took part
    for summary in summaries:
        assert summary["trials"] == 6 and summary["states"]["complete"] == 6 and summary["states"]["running"] == 0


def test_same_setting_keeps_the_first_trials_device_and_precision():
    """Workers of two kinds sharing one storage: the study's first trial sets its setting; a trial that ran on
    another device type or precision is told as failed, so a GPU trial never wins a CPU study's selection."""
    opt_study = optuna.create_study()
    cpu = {"identity": {"device_type": "cpu", "precision": "fp32", "data_sha256": {}}, "tuning": {"trial": 0}}
    gpu = {"identity": {"device_type": "cuda", "precision": "bf16", "data_sha256": {}}, "tuning": {"trial": 1}}
    assert sweep.same_setting(opt_study, cpu) and opt_study.user_attrs["setting"] == CPU
    assert sweep.same_setting(opt_study, cpu)
    assert not sweep.same_setting(opt_study, gpu)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"seeds": []}, r"hydra\.sweeper\.seeds: must list at least one seed"),
        ({"seeds": [0, 1000]}, r"hydra\.sweeper\.seeds: includes 1000, the default tuning seed"),
        ({"seeds": [0], "tuning_seed": "x"}, r"hydra\.sweeper\.tuning_seed: must be an integer or null"),
        ({"seeds": [0], "n_trials": 0}, r"hydra\.sweeper\.n_trials: must be a positive integer"),
        ({"seeds": [0], "sampler": {"_target_": "optuna.Nope"}}, r"hydra\.sweeper\.sampler\._target_: cannot import"),
    ],
)
def test_bad_settings_are_refused_before_any_cell_is_planned(settings, message):
    def never(_):
        raise AssertionError("nothing may compose or launch")

    with pytest.raises(ConfigError, match=message):
        sweep.Sweep(sweep.Settings(**settings), never, never)


def test_a_tuning_seed_on_a_final_seed_is_allowed_only_explicitly(caplog):
    assert sweep.tuning_seed(None, [0, 1]) == 1000
    assert sweep.tuning_seed(0, [0, 1]) == 0 and "tuning seed 0 is also a final seed" in caplog.text


@pytest.mark.parametrize("key", ["role", "tuning.trial", "tuning"])
def test_keys_the_sweep_sets_per_job_cannot_be_overridden(key):
    with pytest.raises(ConfigError, match=rf"^{key}: is set by the study sweeper"):
        sweep.check_key(key)


def test_a_tuned_key_set_on_the_command_line_is_refused(tmp_path):
    runner = make_sweep(tmp_path, FakeLauncher())
    with pytest.raises(ConfigError, match=r"method\.lr: is tuned in this study"):
        runner.plan([(["method=lora", "method.lr=1e-3"], {"method": "lora"})], fixed={"method.lr"})


def test_a_trial_asked_past_n_trials_by_a_concurrent_sweeper_is_closed_unrun(tmp_path):
    """Two sweepers that both counted n_trials - 1 ask at once: the later trial is closed unrun (FAIL, marked
    surplus), is not launched, and does not count; the summary says so."""
    runner = make_sweep(tmp_path, FakeLauncher(), n_trials=2)
    (cell,) = runner.plan([(["method=lora"], {"method": "lora"})])
    opt_study = optuna.create_study(
        study_name=cell.study_name, storage=runner._storage(cell.storage_url), direction=cell.direction
    )
    jobs = [runner._ask(cell, opt_study) for _ in range(3)]  # _ask alone: the count check raced and passed
    assert jobs[0] is not None and jobs[1] is not None and jobs[2] is None
    third = opt_study.get_trials(deepcopy=False)[2]
    assert third.state.name == "FAIL" and third.user_attrs["surplus"] is True
    assert len(counted_trials(opt_study.get_trials(deepcopy=False))) == 2
    summary = study.cell_summary(opt_study, {}, {}, [], tmp_path, {})
    assert (summary["trials"], summary["attempts"], summary["surplus"], summary["states"]["fail"]) == (2, 3, 1, 0)


def test_a_running_trial_without_heartbeat_past_the_grace_period_is_retried(tmp_path):
    """A trial left RUNNING by a sweep of an older harness (or whose sweeper died before its first beat) has no
    heartbeat, which Optuna never declares stale: past the grace period the sweep fails it and runs it again."""
    runner = make_sweep(tmp_path, FakeLauncher(), n_trials=2)
    (cell,) = runner.plan([(["method=lora"], {"method": "lora"})])
    opt_study = optuna.create_study(
        study_name=cell.study_name, storage=runner._storage(cell.storage_url), direction=cell.direction
    )
    with pytest.warns(UserWarning):  # Optuna: heartbeats are meant for study.optimize
        orphan = opt_study.ask(cell.space.distributions)  # RUNNING, no heartbeat ever recorded
    time.sleep(FAST.grace + 0.5)
    runner.run([cell])
    trials = load(cell).trials
    assert trials[0].state.name == "FAIL" and len(counted_trials(trials)) == 2
    retried = [t for t in trials if study.retried_number(t) == orphan.number]
    assert len(retried) == 1 and retried[0].params == orphan.params and retried[0].state.name == "COMPLETE"


def test_a_final_whose_worker_died_runs_again(tmp_path):
    lost = []

    def loses_first_final(job):
        if job["role"] == "final" and not lost:
            lost.append(job["seed"])
            return sweep.LOST
        return {"status": "success", "validation": 0.5}

    launch = FakeLauncher(loses_first_final)
    _, (summary,) = run_sweep(tmp_path, launch, n_trials=2)
    assert sorted(j["seed"] for j in launch.finals()) == ["0", "0", "1"]
    assert sorted(f["seed"] for f in summary["finals"]) == [0, 1]


def test_a_dead_trial_is_queued_again_once_whoever_notices(tmp_path):
    """Two sweepers noticing the same dead trial: only the one whose update closes it queues the retry."""
    runner = make_sweep(tmp_path, FakeLauncher(), n_trials=2)
    (cell,) = runner.plan([(["method=lora"], {"method": "lora"})])
    opt_study = optuna.create_study(
        study_name=cell.study_name, storage=runner._storage(cell.storage_url), direction=cell.direction
    )
    job = runner._ask(cell, opt_study)
    running = opt_study.get_trials(deepcopy=False)[0]
    sweep.requeue(opt_study, running, FAST, "its worker died")
    sweep.requeue(opt_study, running, FAST, "its worker died")  # the second sweeper, a moment later
    waiting = [t for t in opt_study.get_trials(deepcopy=False) if t.state.name == "WAITING"]
    assert job is not None and len(waiting) == 1 and study.retried_number(waiting[0]) == 0


def test_a_retry_asked_by_a_sweeper_that_died_before_its_first_beat_is_retried_again(tmp_path):
    """A retry inherits its failed attempt's attributes, the heartbeat mark included: a sweeper killed between
    asking for the retry and its first beat leaves a RUNNING trial with no heartbeat, which must still go stale."""
    runner = make_sweep(tmp_path, FakeLauncher(), n_trials=1)
    (cell,) = runner.plan([(["method=lora"], {"method": "lora"})])
    opt_study = optuna.create_study(
        study_name=cell.study_name, storage=runner._storage(cell.storage_url), direction=cell.direction
    )
    runner._ask(cell, opt_study)
    sweep.requeue(opt_study, opt_study.get_trials(deepcopy=False)[0], FAST, "its worker died")
    with pytest.warns(UserWarning):
        opt_study.ask()  # the dying sweeper takes the retry, and never beats for it
    time.sleep(FAST.grace + 0.5)
    runner._recover(opt_study)
    states = [t.state.name for t in opt_study.get_trials(deepcopy=False)]
    assert states == ["FAIL", "FAIL", "WAITING"]
