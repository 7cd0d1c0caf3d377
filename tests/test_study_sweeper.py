"""hydra/sweeper=study end to end on the tiny model: tuning, finals, resume after kill -9, pruning, launchers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import REPO, TINY, compose_config, run_cli

from harness import records, study
from harness.storage import counted_trials, retried_number

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats every second, silent for three is dead: a killed sweep's trial is retried within seconds.
STUDY = [
    "hydra/sweeper=study",
    "task=toy_sentiment",
    "hydra.sweeper.heartbeat_interval=1",
    "hydra.sweeper.grace_period=3",
]


def _storage(results_dir) -> str:
    return f"sqlite:///{results_dir / 'optuna.db'}"


def _studies(results_dir) -> dict[str, optuna.Study]:
    names = optuna.get_all_study_names(storage=_storage(results_dir))
    return {name: optuna.load_study(study_name=name, storage=_storage(results_dir)) for name in names}


def _by_role(results_dir) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {"trial": [], "final": [], "run": []}
    for record in records.load_records(results_dir):
        grouped[record["role"]].append(record)
    return grouped


def test_a_study_tunes_each_cell_then_reruns_the_best_over_seeds_and_a_rerun_trains_nothing(tmp_path):
    first = run_cli(tmp_path, *STUDY, "method=lora,ia3", "hydra.sweeper.n_trials=4", "seed=0,1")
    assert first.returncode == 0, first.stderr[-3000:]
    studies = _studies(tmp_path)
    assert sorted(name.split("#")[0] for name in studies) == [
        "tiny_bert/toy_sentiment/ia3/tiny",
        "tiny_bert/toy_sentiment/lora/tiny",
    ]
    runs = _by_role(tmp_path)
    assert len(runs["trial"]) == 8 and len(runs["final"]) == 4 and not runs["run"]
    for name, opt_study in studies.items():
        assert len(opt_study.trials) == 4
        trials = [r for r in runs["trial"] if r["tuning"]["study"] == name]
        assert sorted(r["tuning"]["trial"] for r in trials) == [0, 1, 2, 3]
        assert all(r["primary_metric"]["test"] is None and r["metrics"]["test"] == {} for r in trials)
        best = opt_study.best_trial
        finals = [r for r in runs["final"] if r["tuning"]["study"] == name]
        assert sorted(r["seed"] for r in finals) == [0, 1]
        # tuned on a seed no final uses: no reported test score repeats the draw that won the selection
        assert {r["seed"] for r in trials} == {1000}
        for final in finals:
            assert final["tuning"]["trial"] == best.number
            assert final["tuning"]["params"] == best.user_attrs["assignments"]
            for key, value in best.user_attrs["assignments"].items():
                assert final["config"]["method"][key] == value
            assert final["primary_metric"]["test"] is not None
        summary = json.loads(study.summary_path(tmp_path, name).read_text())
        assert summary["trials"] == 4 and summary["best"]["trial"] == best.number
        assert (summary["tuning_seed"], summary["final_seeds"]) == (1000, [0, 1])
        assert summary["tuning_cost"]["steps"] == sum(r["compute"]["steps"] for r in trials)
        assert sorted(f["run_id"] for f in summary["finals"]) == sorted(f["run_id"] for f in finals)
    lora = next(r for r in runs["trial"] if r["method"] == "lora")
    assert lora["config"]["method"]["lora_alpha"] == 2 * lora["config"]["method"]["r"]

    before = {r["run_id"]: r["finished_at"] for r in records.load_records(tmp_path)}
    second = run_cli(tmp_path, *STUDY, "method=lora,ia3", "hydra.sweeper.n_trials=4", "seed=0,1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert {r["run_id"]: r["finished_at"] for r in records.load_records(tmp_path)} == before
    assert (second.stdout + second.stderr).count("already succeeded") == 4  # the finals; trials are not relaunched
    assert all(len(s.trials) == 4 for s in _studies(tmp_path).values())
    _report_of_a_real_study(tmp_path, _studies(tmp_path))


def _report_of_a_real_study(results_dir, studies) -> None:
    """harness-report on real sweeper output: finals in the table, one tuning row and plot per cell."""
    import pandas as pd

    from harness.report import cli as report

    assert report.main([str(results_dir), "--formats", "md,csv"]) == 0
    out = results_dir / "report"
    cells = pd.read_csv(out / "summary.csv").set_index("method")
    assert sorted(cells.index) == ["ia3", "lora"] and set(cells["n"]) == {2} and set(cells["role"]) == {"final"}
    finals = {
        m: [r["primary_metric"]["test"] for r in _by_role(results_dir)["final"] if r["method"] == m]
        for m in cells.index
    }
    assert cells.loc["lora", "mean"] == pytest.approx(sum(finals["lora"]) / 2)
    tuning = pd.read_csv(out / "tuning.csv").set_index("label")
    for name, opt_study in studies.items():
        method = name.split("/")[2]
        assert tuning.loc[method, "trials"] == 4 and tuning.loc[method, "best_trial"] == opt_study.best_trial.number
    assert (out / "plots" / "toy_sentiment_tuning.png").exists()
    assert "Trials ran on seed 1000; finals were scored on seeds 0, 1." in (out / "report.md").read_text()


def test_a_tuning_seed_set_to_a_final_seed_is_allowed_and_that_final_repeats_the_winning_draw(tmp_path):
    """Why the default tuning seed is one no final uses: a final on the tuning seed is the winning trial again."""
    result = run_cli(
        tmp_path,
        *STUDY,
        "method=ia3",
        "hydra.sweeper.n_trials=2",
        "seed=0,1",
        "budget.max_steps=4",
        "hydra.sweeper.tuning_seed=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tuning seed 0 is also a final seed (set explicitly)" in result.stdout + result.stderr
    (opt_study,) = _studies(tmp_path).values()
    finals = {r["seed"]: r for r in _by_role(tmp_path)["final"]}
    assert finals[0]["primary_metric"]["validation"] == opt_study.best_value  # the very trial that won, again
    from harness.report import cli as report

    assert report.main([str(tmp_path), "--formats", "md"]) == 0
    assert "ia3: final seed 0 is also a tuning seed (set explicitly)" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow  # 25 s; tests/test_faults.py kills sweepers and workers, tests/test_sweep.py the resume logic
def test_a_study_killed_mid_sweep_resumes_to_exactly_n_trials(tmp_path):
    overrides = [
        *STUDY,
        "method=lora",
        "hydra.sweeper.n_trials=5",
        "seed=0",
        "budget.max_steps=30",
        "budget.eval_steps=10",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "harness.cli", "-m", *TINY, *overrides, f"results_dir={tmp_path}"]
    sweep = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(records.runs_dir(tmp_path).glob("*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    killed_after = len(_by_role(tmp_path)["trial"])
    assert 2 <= killed_after < 5

    resumed = run_cli(tmp_path, *overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (opt_study,) = _studies(tmp_path).values()
    assert len(counted_trials(opt_study.trials)) == 5  # the killed trial, if one was running, retried once
    assert len(opt_study.trials) == 5 + sum(retried_number(t) is not None for t in opt_study.trials)
    assert all(t.state.is_finished() for t in opt_study.trials)
    runs = _by_role(tmp_path)
    numbers = [r["tuning"]["trial"] for r in runs["trial"]]  # a retry carries its first attempt's number
    assert len(numbers) == len(set(numbers)) == 5 and 0 in numbers
    assert len(runs["final"]) == 1
    files = list(records.runs_dir(tmp_path).glob("*.json"))
    assert len(files) == 6 and all(json.loads(f.read_text())["status"] for f in files)


def test_pruned_trials_are_recorded_as_pruned_with_the_compute_they_spent(tmp_path):
    # Accuracy never exceeds 1.01, so the threshold pruner stops every trial at its first evaluation.
    result = run_cli(
        tmp_path, *STUDY, "method=ia3", "hydra.sweeper.n_trials=2", "seed=0", "budget.max_steps=6",
        "budget.eval_steps=2", "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.01",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (opt_study,) = _studies(tmp_path).values()
    assert [t.state for t in opt_study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    runs = _by_role(tmp_path)
    assert not runs["final"] and "no trial completed" in result.stdout + result.stderr
    for record in runs["trial"]:
        assert record["status"] == "pruned" and record["pruned_at_step"] == 2
        assert record["compute"]["steps"] == 2 and record["compute"]["train_tokens"] > 0
    summary = json.loads(study.summary_path(tmp_path, opt_study.study_name).read_text())
    assert summary["pruned_trials"] == [0, 1] and summary["tuning_cost"]["steps"] == 4


@pytest.mark.slow  # test_multirun covers a failing job in the default run
def test_a_cell_whose_trials_all_fail_is_recorded_and_the_other_cells_finish(tmp_path):
    result = run_cli(
        tmp_path, *STUDY, "method=lora,ia3", "hydra.sweeper.n_trials=2", "seed=0", "train.max_grad_norm=1e30",
        "hydra.sweeper.search={ia3:{space:{lr:{type:float,low:1e20,high:1e21,log:true}}}}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _by_role(tmp_path)
    ia3 = [r for r in runs["trial"] if r["method"] == "ia3"]
    assert [r["status"] for r in ia3] == ["failed", "failed"] and all(r["error_kind"] == "non_finite_loss" for r in ia3)
    assert [r["method"] for r in runs["final"]] == ["lora"]
    states = {name.split("/")[2]: {t.state.name for t in s.trials} for name, s in _studies(tmp_path).items()}
    assert states == {"ia3": {"FAIL"}, "lora": {"COMPLETE"}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method=lora", "method.lr=1e-3"],
            "error: method.lr: is tuned in this study; fix it with method.search.space.lr=null",
        ),
        (
            ["method=lora", "hydra.sweeper.search={lora:{space:{r:{type:normal}}}}"],
            "error: method.search.space.r.type: got 'normal'",
        ),
        (["method=lora,nope"], "error: method: no option 'nope'"),
        pytest.param(["method=ia3,lora", "method.r=4"], "error: method.r: unknown key", marks=pytest.mark.slow),
        pytest.param(
            ["method=lora", "method.lora_dropout=2"],
            "error: method.lora_dropout: must be in [0, 1) (got 2)",
            marks=pytest.mark.slow,
        ),
        (
            ["method=lora", "hydra.sweeper.storage=optuna.db"],
            "error: hydra.sweeper.storage: 'optuna.db' is not a database URL",
        ),
        (["method=lora", "seed=0,1000"], "error: hydra.sweeper.seeds: includes 1000, the default tuning seed"),
        pytest.param(
            ["method=lora", "tuning.trial=3"],
            "error: tuning.trial: is set by the study sweeper",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_bad_sweep_input_fails_before_anything_trains(tmp_path, overrides, message):
    result = run_cli(tmp_path, *STUDY, *overrides)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not records.runs_dir(tmp_path).exists()


@pytest.mark.slow  # launcher path: about 30 s
def test_two_joblib_workers_share_one_storage_and_write_every_record_once(tmp_path):
    result = run_cli(
        tmp_path, *STUDY, "method=lora", "hydra.sweeper.n_trials=4", "seed=0,1",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    runs = _by_role(tmp_path)
    assert sorted(r["tuning"]["trial"] for r in runs["trial"]) == [0, 1, 2, 3] and len(runs["final"]) == 2
    assert len({r["run_id"] for r in records.load_records(tmp_path)}) == 6
    assert not list(records.runs_dir(tmp_path).glob(".*.tmp"))
    job_dirs = list((tmp_path / "hydra" / "multirun").glob("*/*/.hydra"))
    assert len(job_dirs) == 6  # one output folder per job, none shared


@pytest.mark.slow  # launcher path: about 35 s
def test_submitit_launcher_runs_the_study_in_separate_processes(tmp_path):
    result = run_cli(
        tmp_path, *STUDY, "method=ia3", "hydra.sweeper.n_trials=2", "seed=0",
        "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "hydra.launcher.timeout_min=10",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _by_role(tmp_path)
    assert len(runs["trial"]) == 2 and len(runs["final"]) == 1
    assert len({r["environment"].get("pid") for r in records.load_records(tmp_path)} | {os.getpid()}) == 4


def test_the_slurm_preset_and_experiment_presets_compose():
    slurm = compose_config(["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.gpus_per_node == 1 and slurm.array_parallelism == 8
    demo = compose_config(["experiment=demo"], return_hydra_config=True)
    assert demo.hydra.sweeper._target_.endswith("StudySweeper") and demo.model.name == "minilm"
    assert demo.hydra.sweeper.grid.method == "full,lora,ia3" and demo.results_dir == "results/demo"
    glue = compose_config(["experiment=peft_glue"], return_hydra_config=True)
    assert glue.model.name == "roberta_base" and glue.hydra.sweeper.grid.task == "sst2,mrpc,rte,cola,qnli"
    assert list(glue.hydra.sweeper.seeds) == [0, 1, 2, 3, 4]
    for task, steps in (("sst2", 350), ("mrpc", 80)):  # each task its own steps, every method of it the same
        cpu = compose_config(["experiment=glue_cpu", f"task={task}"], return_hydra_config=True)
        assert cpu.budget.max_steps == steps and cpu.data_root == "../shared/data" and cpu.model.name == "minilm"
    assert cpu.hydra.sweeper.grid.method == "full,lora,ia3,head" and cpu.hydra.sweeper.grid.task == "sst2,mrpc"


def test_the_plugin_crosses_hydra_overrides_into_cells_and_unwraps_what_hydras_launcher_returns(tmp_path):
    """The adapter alone, in process and with a fake launcher (nothing trains): grid and command-line axes become
    cells, ``seed=`` sets the finals, job numbers run on, and a job that raised is a failed trial."""
    from hydra import compose, initialize_config_dir
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import HydraContext

    from harness.cli import CONFIG_DIR
    from harness.search import override_value

    class FakeLauncher:
        def __init__(self):
            self.calls: list[tuple[int, list[list[str]]]] = []

        def launch(self, batch, initial_job_idx):
            self.calls.append((initial_job_idx, batch))
            return [self._return(dict(o.split("=", 1) for o in overrides)) for overrides in batch]

        @staticmethod
        def _return(job):
            if job["role"] == "trial" and job["tuning.trial"] == "0":
                return JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("out of memory"))
            record = {"run_id": f"{job['method']}-{job['role']}-{job['seed']}", "status": "success",
                      "seed": int(job["seed"]), "identity": {"device_type": "cpu", "precision": "fp32"},
                      "primary_metric": {"validation": 0.5, "test": 0.6}}  # fmt: skip
            return JobReturn(status=JobStatus.COMPLETED, _return_value=record)

    hydra_overrides = ["hydra/sweeper=study", "hydra.sweeper.n_trials=2", "hydra.sweeper.grid={method: 'lora,ia3'}",
                       f"hydra.sweep.dir={tmp_path / 'multirun'}", f"results_dir={tmp_path}"]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        config = compose(config_name="config", overrides=hydra_overrides, return_hydra_config=True)
        from hydra.core.global_hydra import GlobalHydra

        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
        sweeper = Plugins.instance().instantiate_sweeper(hydra_context=context, task_function=None, config=config)
        sweeper.launcher = launcher = FakeLauncher()
        summaries = sweeper.sweep([*TINY, "task=toy_sentiment", "seed=3,4", f"results_dir={tmp_path}"])
        with pytest.raises(SystemExit) as refused:
            sweeper.sweep([*TINY, "task=toy_sentiment", "tuning.trial=3"])
        assert refused.value.code == 2
    assert [s["study"].split("#")[0] for s in summaries] == ["tiny_bert/toy_sentiment/lora/tiny",
                                                            "tiny_bert/toy_sentiment/ia3/tiny"]  # fmt: skip
    assert [idx for idx, _ in launcher.calls] == [0, 1, 2, 3, 4, 5, 6, 7]  # one job at a time, numbered on
    for summary in summaries:
        assert summary["states"]["fail"] == 1 and summary["states"]["complete"] == 1
        assert summary["final_seeds"] == [3, 4] and [f["seed"] for f in summary["finals"]] == [3, 4]
        jobs = [dict(o.split("=", 1) for o in batch[0]) for _, batch in launcher.calls]
        mine = [j for j in jobs if j["tuning.study"] == override_value(summary["study"])]
        assert [(j["role"], j["seed"]) for j in mine] == [("trial", "1000"), ("trial", "1000"), ("final", "3"),
                                                         ("final", "4")]  # fmt: skip
    assert (tmp_path / "multirun" / "multirun.yaml").is_file()
