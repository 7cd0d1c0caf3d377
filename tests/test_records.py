"""Run records: schema, identity, atomic writes, skip-if-done, failures."""

from __future__ import annotations

import json

import pytest
from conftest import TINY

from harness import records, run
from harness.cli import run_one


def test_run_id_ignores_output_paths_but_not_the_experiment(make_cfg, tmp_path):
    base = records.run_id(make_cfg(*TINY))
    assert records.run_id(make_cfg(*TINY, f"results_dir={tmp_path / 'elsewhere'}", "force=true")) == base
    assert records.run_id(make_cfg(*TINY, "seed=1")) != base
    assert records.run_id(make_cfg(*TINY, "method.r=4")) != base
    assert records.run_id(make_cfg(*TINY, "budget.max_steps=3")) != base


def test_record_schema(make_cfg):
    record = run_one(make_cfg(*TINY, "method=lora"))
    assert records.missing_fields(record) == []
    assert record["schema_version"] == records.SCHEMA_VERSION
    assert (record["model"], record["task"], record["method"], record["budget"], record["seed"]) == (
        "tiny_bert",
        "toy_sentiment",
        "lora",
        "tiny",
        0,
    )
    assert record["primary_metric"]["name"] == "accuracy" and record["primary_metric"]["higher_is_better"] is True
    assert set(record["metrics"]) == {"validation", "test"}
    assert record["memory"]["source"] == "process_rss_sampled_20ms"
    assert record["memory"]["peak_bytes"] >= record["memory"]["baseline_bytes"] > 0
    assert {"optimizer", "precision"} <= set(record["memory"])
    assert record["time"]["train_seconds"] > 0 and record["time"]["eval_seconds"] > 0
    assert record["time"]["train_tokens_per_second"] > 0
    assert len(record["compute"]["data_order_sha256"]) == 64
    assert record["config"]["method"]["r"] == 8 and "results_dir" not in record["config"]
    env = record["environment"]
    assert env["packages"]["torch"] and env["packages"]["peft"] and env["python"]
    assert "git_revision" in env and "git_dirty" in env
    json.dumps(record)  # plain JSON all the way down


def test_second_run_is_skipped_and_force_reruns(make_cfg):
    cfg = make_cfg(*TINY)
    first = run_one(cfg)
    again = run_one(cfg)
    assert again["finished_at"] == first["finished_at"]
    forced = run_one(make_cfg(*TINY, "force=true"))
    assert forced["run_id"] == first["run_id"] and forced["finished_at"] != first["finished_at"]
    assert len(list((records.runs_dir(cfg.results_dir)).glob("*"))) == 1  # no temp files left behind


def test_failure_is_recorded_with_traceback_then_retried(make_cfg, monkeypatch):
    cfg = make_cfg(*TINY)

    def explode(*args, **kwargs):
        raise RuntimeError("simulated crash in training")

    monkeypatch.setattr(run, "_train_and_measure", explode)
    with pytest.raises(SystemExit) as exited:
        run_one(cfg)
    assert exited.value.code == 1
    failed = records.read_record(records.record_path(cfg.results_dir, records.run_id(cfg)))
    assert failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: simulated crash in training"
    assert any("simulated crash" in line for line in failed["traceback"])
    monkeypatch.undo()
    retried = run_one(cfg)  # a failed record is not "done"
    assert retried["status"] == "success"


def test_interrupted_run_leaves_no_record(make_cfg, monkeypatch):
    cfg = make_cfg(*TINY)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_train_and_measure", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_one(cfg)
    assert not records.runs_dir(cfg.results_dir).exists() or not any(records.runs_dir(cfg.results_dir).iterdir())


def test_atomic_write_keeps_the_old_record_when_serialisation_fails(tmp_path):
    path = tmp_path / "runs" / "abc.json"
    records.write_record(path, {"status": "success"})
    circular: dict = {"status": "failed"}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        records.write_record(path, circular)
    assert json.loads(path.read_text()) == {"status": "success"}
    assert [p.name for p in path.parent.iterdir()] == ["abc.json"]


def test_unreadable_record_counts_as_not_done(tmp_path):
    path = records.record_path(tmp_path, "deadbeef")
    path.parent.mkdir(parents=True)
    path.write_text('{"status": "succ')  # torn file from a foreign writer
    assert records.is_done(tmp_path, "deadbeef") is False
    assert records.load_records(tmp_path) == []


def test_every_evaluation_example_is_scored(make_cfg, monkeypatch):
    """13 examples in batches of 8: a dropped last batch would score only 8."""
    from harness.objectives import cls

    seen = []
    original = cls.compute_metrics_for

    def counting(task):
        compute = original(task)

        def wrapped(prediction):
            seen.append(len(prediction.label_ids))
            return compute(prediction)

        return wrapped

    monkeypatch.setattr(cls, "compute_metrics_for", counting)
    run_one(
        make_cfg(*TINY, "task.generator.n_validation=13", "task.generator.n_test=13", "budget.max_eval_samples=null")
    )
    assert set(seen) == {13}
