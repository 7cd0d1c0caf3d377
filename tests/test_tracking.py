"""Experiment trackers (conf/tracking/, harness/tracking.py): what a run and a study log, read back with each
tracker's own reader (TensorBoard's EventAccumulator, MLflow's MlflowClient), offline, on the tiny models."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import socket

import optuna
import pytest
from conftest import SETTLED, TINY, WIKITEXT, compose_config, run_cli
from test_sweep import FakeLauncher, load, run_sweep

from harness import records, tracking
from harness.config import ConfigError
from harness.run import RunFailed, execute, prepare

optuna.logging.set_verbosity(optuna.logging.WARNING)
# The variables the Trainer's integrations read: set for a tracked run only.
# A run whose loss turns NaN at its first step: failed as it trains.
DIVERGING = ["method=full", "method.lr=1e30", "train.max_grad_norm=1e30", "budget.max_steps=4"]
TRACKER_VARIABLES = (
    "TENSORBOARD_LOGGING_DIR",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "WANDB_MODE",
    "TRACKIO_DIR",
)


@pytest.fixture
def shell_variables(monkeypatch) -> dict[str, str]:
    """The variables the trackers set, each already set in the developer's shell: a tracked run must put them
    back as they were, not unset them."""
    values = {variable: f"set-by-the-shell-{variable.lower()}" for variable in TRACKER_VARIABLES}
    for variable, value in values.items():
        monkeypatch.setenv(variable, value)
    return values


def _unchanged(values: dict[str, str]) -> bool:
    return {variable: os.environ.get(variable) for variable in values} == values


def _run(tmp_path, *overrides: str) -> dict:
    """One tiny run in this process, as harness-run runs it; its record."""
    cfg = compose_config([f"results_dir={tmp_path}", *TINY, *overrides])
    return execute(prepare(cfg))


def _close(logged: float, recorded: float) -> bool:
    """TensorBoard keeps scalars as float32: a byte count of hundreds of millions keeps 7 digits."""
    return math.isclose(logged, recorded, rel_tol=1e-6)


def test_tracking_is_not_part_of_a_run_identity():
    ids = {
        name: records.run_id(compose_config([*TINY, f"tracking={name}"]), SETTLED)
        for name in ("none", "tensorboard", "mlflow", "wandb", "trackio")
    }
    assert len(set(ids.values())) == 1, ids
    # ... while what the run is still is: the same config with another seed is another run
    assert records.run_id(compose_config([*TINY, "seed=1", "tracking=mlflow"]), SETTLED) != ids["none"]


def test_no_tracker_no_integration():
    assert tracking.trainer_arguments() == {"report_to": []}
    with tracking.tracked_run(compose_config(TINY), "abc") as tracked:
        assert tracked.tracker is None and tracking.trainer_arguments() == {"report_to": []}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["tracking=tensorboard", "+tracking.colour=blue"],
            "tracking: TensorBoard.__init__() got an unexpected keyword",
        ),
        (["tracking=tensorboard", "tracking.logdir=null"], "tracking.logdir: must be a non-empty string (got None)"),
        (["tracking=mlflow", "tracking.experiment=7"], "tracking.experiment: must be a non-empty string (got 7)"),
        (["tracking=wandb", "tracking.mode=off"], "tracking.mode: must be one of offline, online, disabled"),
        (["tracking._target_=harness.tracking.TrackedRun"], "tracking: TrackedRun.__init__() got an unexpected"),
    ],
)
def test_a_bad_tracker_setting_is_one_line_naming_it(overrides, message):
    from harness.config import resolve_run_config, validate_values

    cfg = compose_config([*TINY, *overrides])
    resolve_run_config(cfg)
    with pytest.raises(ConfigError) as refused:
        validate_values(cfg)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(("name", "package"), [("wandb", "wandb"), ("trackio", "trackio")])
def test_a_tracker_whose_package_is_missing_is_refused_before_anything_loads(name, package, tmp_path):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    from harness.cli import CONFIG_DIR
    from harness.preflight import check_command_line

    with pytest.raises(ConfigError) as refused:
        check_command_line([*TINY, f"tracking={name}", f"results_dir={tmp_path}"], CONFIG_DIR)
    assert str(refused.value) == (
        f"tracking: {name} needs the Python package {package}, which is not installed; pip install {package}"
    )
    assert not any(tmp_path.iterdir())


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _scalars(events, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _text(events, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def test_tensorboard_holds_the_training_curve_the_evaluations_and_the_record(tmp_path, shell_variables):
    record = _run(tmp_path, "tracking=tensorboard")
    assert _unchanged(shell_variables)  # restored after the run
    run_dir = tmp_path / "tracking" / "tensorboard" / record["run_id"]
    events = _events(run_dir)
    curve = record["learning_curve"]
    # the Trainer's logs (transformers' TensorBoardCallback): the training loss at each step, every evaluation
    assert _scalars(events, "train/loss") == [(p["step"], pytest.approx(p["loss"])) for p in curve if "loss" in p]
    evaluated = [(p["step"], pytest.approx(p["eval_accuracy"])) for p in curve if "eval_accuracy" in p]
    assert _scalars(events, "eval/accuracy") == evaluated and [s for s, _ in evaluated] == [0, 1, 2]
    assert _scalars(events, "test/accuracy") == [(2, pytest.approx(record["metrics"]["test"]["accuracy"]))]
    # the record's headline, after the record was written
    for split in ("validation", "test"):
        ((step, value),) = _scalars(events, f"record/{split}/accuracy")
        assert step == record["compute"]["steps"] == 2 and value == pytest.approx(record["metrics"][split]["accuracy"])
    for key in ("params/trainable", "params/method", "memory/train_peak_bytes", "compute/train_tokens"):
        section, name = key.split("/")
        ((_, value),) = _scalars(events, f"record/{key}")
        assert _close(value, record[section][name]), key
    assert _text(events, "record/run_id") == record["run_id"] and _text(events, "record/status") == "success"
    assert "    method:\n" in _text(events, "record/config") and "      r: 8\n" in _text(events, "record/config")


def _mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}")


def _experiment_runs(client, name: str) -> list:
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_mlflow_runs_are_named_by_the_run_id_and_hold_config_curve_metrics_and_record(tmp_path, shell_variables):
    record = _run(tmp_path, "tracking=mlflow")
    assert _unchanged(shell_variables)
    with pytest.raises(RunFailed) as failed:  # a diverging run (tests/test_budget.py), in the same experiment
        _run(tmp_path, "tracking=mlflow", *DIVERGING)
    client = _mlflow(tmp_path)
    # one MLflow run per harness run: none stray from the evaluations after training
    (run, diverged) = _experiment_runs(client, "ft-harness")
    info, data = run.info, run.data
    assert info.run_name == record["run_id"] and info.status == "FINISHED"
    assert info.artifact_uri.startswith((tmp_path / "tracking" / "mlflow-artifacts").as_uri())
    # the run's config as params, beside the Trainer's arguments (MLflowCallback)
    assert data.params["config.method.r"] == "8" and data.params["config.model.name"] == "tiny_bert"
    assert data.params["config.budget.max_steps"] == "2" and data.params["learning_rate"] == "0.0005"
    assert not any(key.startswith("config.tracking") for key in data.params)  # not part of what the run is
    history = client.get_metric_history(info.run_id, "eval_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (p["step"], pytest.approx(p["eval_accuracy"])) for p in record["learning_curve"] if "eval_accuracy" in p
    ]
    assert data.metrics["test_accuracy"] == pytest.approx(record["metrics"]["test"]["accuracy"])
    assert data.metrics["record/test/accuracy"] == pytest.approx(record["metrics"]["test"]["accuracy"])
    assert data.metrics["record/validation/loss"] == pytest.approx(record["metrics"]["validation"]["loss"])
    assert data.metrics["record/params/trainable"] == record["params"]["trainable"]
    assert data.metrics["record/memory/train_peak_bytes"] == record["memory"]["train_peak_bytes"]
    assert data.metrics["record/compute/steps"] == record["compute"]["steps"] == 2
    assert data.tags["harness.run_id"] == record["run_id"] and data.tags["harness.status"] == "success"
    assert data.tags["harness.method"] == "lora" and data.tags["harness.role"] == "run"
    # the failed run: FAILED, with its error and what it measured before failing
    failed = failed.value.record
    assert diverged.info.run_name == failed["run_id"] and diverged.info.status == "FAILED"
    assert diverged.data.tags["harness.status"] == "failed" and diverged.data.tags["harness.error"] == failed["error"]
    assert diverged.data.metrics["record/params/trainable"] == failed["params"]["trainable"]


@pytest.mark.slow  # 25 s; the trial logger's scoping and failure paths are tested in-process in the default run
def test_a_study_is_one_mlflow_experiment_with_one_run_per_trial_and_final(tmp_path):
    done = run_cli(
        tmp_path, "hydra/sweeper=study", "task=toy_sentiment", "hydra.sweeper.n_trials=2", "seed=0", "tracking=mlflow"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (name,) = optuna.get_all_study_names(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    client = _mlflow(tmp_path)
    assert sorted(e.name for e in client.search_experiments()) == ["Default", name]
    runs = {run.data.tags["harness.run_id"]: run for run in _experiment_runs(client, name)}
    by_role = {"trial": [], "final": []}
    for record in records.load_records(tmp_path):
        by_role[record["role"]].append(record)
    assert sorted(runs) == sorted(r["run_id"] for r in by_role["trial"] + by_role["final"]) and len(runs) == 3
    for trial in study.trials:  # each trial's run holds what Optuna was told (optuna-integration's MLflowCallback)
        run = runs[trial.user_attrs["run_id"]]
        assert run.info.run_name == trial.user_attrs["run_id"] and run.info.status == "FINISHED"
        assert run.data.tags["state"] == trial.state.name == "COMPLETE"
        assert run.data.metrics["trial/accuracy"] == pytest.approx(trial.value)
        assert {k: float(run.data.params[k]) for k in trial.params} == pytest.approx(trial.params)
        assert run.data.tags["harness.role"] == "trial" and run.data.tags["harness.tuning.study"] == name
    (final,) = by_role["final"]
    run = runs[final["run_id"]]
    assert run.data.tags["harness.role"] == "final" and "trial/accuracy" not in run.data.metrics
    assert run.data.metrics["record/test/accuracy"] == pytest.approx(final["metrics"]["test"]["accuracy"])


def test_a_study_trial_in_tensorboard_holds_its_sampled_values_and_value(tmp_path):
    """TensorBoard's HParams summaries of each told trial, in the folder of the trial's run."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = compose_config([f"results_dir={tmp_path}", *TINY, "tracking=tensorboard"])
    study = optuna.create_study(study_name="cell/a#1", direction="maximize")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    trial.set_user_attr("run_id", "0123abcd")
    study.tell(trial, 0.75)
    with tracking.study_logger(cfg, study.study_name) as log_trial:
        log_trial(study, trial._trial_id)
    events = _events(tmp_path / "tracking" / "tensorboard" / "cell_a_1" / "0123abcd")
    assert _scalars(events, "trial/accuracy") == [(0, 0.75)]
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    ).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(trial.params["lr"])
    assert start.hparams["state"].string_value == "COMPLETE"


@pytest.mark.slow  # about 20 s, most of it reading the tiny Llama's GGUF file
def test_ppo_logs_its_own_loop_to_the_tracker(tmp_path):
    """PPO trains in a loop of its own: its rollout statistics and evaluations reach TensorBoard through the
    Trainer's callback handler like any objective's."""
    from test_objectives import TINY_LM

    cfg = compose_config(
        [f"results_dir={tmp_path}", *TINY_LM, "task=arithmetic", "objective=ppo", "tracking=tensorboard"]
    )
    record = execute(prepare(cfg))
    events = _events(tmp_path / "tracking" / "tensorboard" / record["run_id"])
    tags = set(events.Tags()["scalars"])
    logged = next(p for p in record["learning_curve"] if "loss" in p)
    for key in ("loss", "score", "kl"):
        assert _scalars(events, f"train/{key}") == [(logged["step"], pytest.approx(logged[key]))]
    assert {"eval/exact_match", "test/exact_match", "record/test/exact_match", "record/params/auxiliary"} <= tags


def _wandb_records(path):
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``): a LevelDB-style log of 32 KiB
    blocks, each record cut into chunks of a 7-byte header (CRC, length, type) and data, after a 7-byte file
    header. wandb 0.31 ships no Python reader of its own."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, position, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        parts += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def _wandb_key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_offline_run_holds_the_curve_and_the_record(tmp_path, shell_variables):
    import json

    record = _run(tmp_path, "tracking=wandb")
    assert _unchanged(shell_variables)
    (path,) = (tmp_path / "tracking" / "wandb").glob("offline-run-*/run-*.wandb")
    history, summary, names = [], {}, []
    for entry in _wandb_records(path):
        kind = entry.WhichOneof("record_type")
        if kind == "run":
            names.append(entry.run.display_name)
        elif kind == "history":
            history.append({_wandb_key(item): json.loads(item.value_json) for item in entry.history.item})
        elif kind == "summary":
            summary.update({_wandb_key(item): json.loads(item.value_json) for item in entry.summary.update})
    assert names == [record["run_id"]]
    losses = [(p["step"], pytest.approx(p["loss"])) for p in record["learning_curve"] if "loss" in p]
    assert [(h["train/global_step"], h["train/loss"]) for h in history if "train/loss" in h] == losses
    assert [h["test/accuracy"] for h in history if "test/accuracy" in h] == [record["metrics"]["test"]["accuracy"]]
    assert summary["record/test/accuracy"] == record["metrics"]["test"]["accuracy"]
    assert summary["record/params/trainable"] == record["params"]["trainable"]
    assert summary["record/run_id"] == record["run_id"] and summary["record/status"] == "success"


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio is not installed")
def test_trackio_local_run_holds_the_curve_and_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "tracking" / "trackio"))  # read once, when trackio is imported
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    if tmp_path / "tracking" / "trackio" != trackio.utils.TRACKIO_DIR:
        pytest.skip("trackio was imported earlier in this process, with another TRACKIO_DIR")
    record = _run(tmp_path, "tracking=trackio")
    (run,) = trackio.Api().runs("ft-harness")
    assert run.name == record["run_id"] and run.config["harness"]["config"]["method"]["r"] == 8
    logs = SQLiteStorage.get_logs("ft-harness", run.name)
    losses = [pytest.approx(p["loss"]) for p in record["learning_curve"] if "loss" in p]
    assert [row["train/loss"] for row in logs if "train/loss" in row] == losses
    (headline,) = [row for row in logs if "record/test/accuracy" in row]
    assert headline["record/test/accuracy"] == record["metrics"]["test"]["accuracy"]
    assert headline["record/params/trainable"] == record["params"]["trainable"]


def _told_trial(study_name: str, run_id: str, value: float) -> tuple[optuna.Study, int]:
    """A study in memory with one trial told ``value``, its record's run_id ``run_id``: the study and its id."""
    study = optuna.create_study(study_name=study_name, direction="maximize")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    trial.set_user_attr("run_id", run_id)
    study.tell(trial, value)
    return study, trial._trial_id


def test_a_logged_trial_leaves_mlflow_as_it_was_so_the_next_run_lands_in_its_own_database(tmp_path, monkeypatch):
    """optuna-integration's MLflowCallback sets mlflow's tracking URI and experiment for the whole process (and
    MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID): a run tracked after a trial was logged went to the trial's
    database. Here a trial is logged under results_dir a, then a run is tracked under results_dir b."""
    import mlflow
    from mlflow.tracking import MlflowClient

    shell = f"sqlite:///{tmp_path / 'shell.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shell)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    first, second = (compose_config([f"results_dir={tmp_path / d}", *TINY, "tracking=mlflow"]) for d in "ab")
    study, trial_id = _told_trial("cell-a", "trial-run", 0.75)
    with tracking.study_logger(first, study.study_name) as log_trial:
        log_trial(study, trial_id)
    assert os.environ["MLFLOW_TRACKING_URI"] == shell and "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert mlflow.get_tracking_uri() == shell
    with tracking.tracked_run(second, "run-b") as tracked:
        mlflow.log_metric("train_loss", 1.5)  # the fluent API, as transformers' MLflowCallback logs
        tracked.log_record({"run_id": "run-b", "status": "success", "metrics": {"test": {"accuracy": 0.5}}})
    assert os.environ["MLFLOW_TRACKING_URI"] == shell and mlflow.get_tracking_uri() == shell
    a, b = (MlflowClient(f"sqlite:///{tmp_path / d / 'tracking' / 'mlflow.db'}") for d in "ab")
    (trial_run,) = _experiment_runs(a, "cell-a")
    assert trial_run.info.run_name == "trial-run" and trial_run.data.metrics["trial/accuracy"] == 0.75
    assert a.search_runs([e.experiment_id for e in a.search_experiments()], "tags.`harness.run_id` = 'run-b'") == []
    (run,) = _experiment_runs(b, "ft-harness")
    assert run.info.run_name == "run-b" and run.info.status == "FINISHED"
    assert run.data.metrics == {"train_loss": 1.5, "record/test/accuracy": 0.5}
    assert run.data.tags["mlflow.user"]  # what mlflow.start_run adds to a run it creates


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_mlflow_server_is_warned_about_and_the_study_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # mlflow's own retries: none, not minutes of them
    uri = f"http://127.0.0.1:{_closed_port()}"
    launch = FakeLauncher()
    with caplog.at_level(logging.WARNING, logger="harness"):
        (cell,), (summary,) = run_sweep(
            tmp_path, launch, n_trials=2, overrides=["tracking=mlflow", f"tracking.tracking_uri='{uri}'"]
        )
    assert [t.state.name for t in load(cell).trials] == ["COMPLETE", "COMPLETE"] and len(launch.trials()) == 2
    assert len(launch.finals()) == 2 and len(summary["finals"]) == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tracking:")]
    assert warning.startswith(f"tracking: mlflow cannot log the trials of {cell.study_name}: ")


# A record's forgetting and retention blocks as harness.forgetting writes them (a causal LM's, an encoder's).
FORGETTING = {"before_ce": 10.75, "after_ce": 10.5, "forgetting": -0.25, "forgetting_stderr": 0.01,
              "scored_tokens": 255, "sequence_length": 256, "windows": 1, "text": "wikitext2", "seconds": 0.1}  # fmt: skip
RETENTION = {"task": "sst2", "split": "test", "examples": 16, "metrics": {"accuracy": 0.625, "loss": 0.69},
             "primary_metric": {"name": "accuracy", "value": 0.625}, "seconds": 0.2}  # fmt: skip


def test_the_forgetting_and_retention_blocks_reach_the_tracker_as_record_scalars(tmp_path):
    numbers, texts = tracking.headline({"run_id": "abc", "forgetting": FORGETTING, "retention": RETENTION})
    assert {k: v for k, v in numbers.items() if k.startswith("forgetting/")} == {
        f"forgetting/{k}": v for k, v in FORGETTING.items() if k != "text"
    }
    assert {k: v for k, v in numbers.items() if k.startswith("retention/")} == {
        "retention/accuracy": 0.625,
        "retention/loss": 0.69,
    }
    tracker, run = tracking.TensorBoard("tensorboard", str(tmp_path)), tracking.TrackedRun("abc", compose_config(TINY))
    tracker.log_record(run, {"run_id": "abc", "forgetting": FORGETTING, "retention": RETENTION})
    events = _events(tmp_path / "abc")
    assert _scalars(events, "record/forgetting/forgetting") == [(0, -0.25)]
    assert _scalars(events, "record/forgetting/before_ce") == [(0, 10.75)]
    assert _scalars(events, "record/retention/accuracy") == [(0, 0.625)]


@pytest.mark.slow  # about 30 s: the tiny Llama's GGUF file, and WikiText scored before and after
@pytest.mark.skipif(not WIKITEXT.is_file(), reason=f"{WIKITEXT} absent (../shared/data)")
def test_a_causal_lm_runs_forgetting_reaches_the_tracker(tmp_path):
    from test_objectives import TINY_LM  # the tiny Llama, with the GENERAL_TEXT overrides (conftest)

    cfg = compose_config([f"results_dir={tmp_path}", *TINY_LM, "task=arithmetic", "tracking=tensorboard"])
    record = execute(prepare(cfg))
    events = _events(tmp_path / "tracking" / "tensorboard" / record["run_id"])
    steps = record["compute"]["steps"]
    for key in ("before_ce", "after_ce", "forgetting", "forgetting_stderr", "scored_tokens"):
        assert _scalars(events, f"record/forgetting/{key}") == [(steps, pytest.approx(record["forgetting"][key]))]
