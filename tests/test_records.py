"""Run records: schema, identity, atomic writes, skip-if-done, failures."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SETTLED, TINY, run_id_of

from harness import records, run
from harness.cli import run_one


def test_run_id_ignores_output_paths_but_not_the_experiment(make_cfg, tmp_path):
    base = records.run_id(make_cfg(*TINY), SETTLED)
    moved = make_cfg(*TINY, f"results_dir={tmp_path / 'elsewhere'}", "force=true", "data_root=/elsewhere")
    assert records.run_id(moved, SETTLED) == base
    assert records.run_id(make_cfg(*TINY, "seed=1"), SETTLED) != base
    assert records.run_id(make_cfg(*TINY, "method.r=4"), SETTLED) != base
    assert records.run_id(make_cfg(*TINY, "budget.max_steps=3"), SETTLED) != base


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("device_type", "cuda"),
        ("precision", "bf16"),
        ("data_sha256", {"train": "other", "validation": "v", "test": "x"}),
    ],
)
def test_what_a_run_settles_is_part_of_its_identity(make_cfg, key, value):
    """precision=auto is bf16 on a GPU and fp32 here; a generator or file can change under one config."""
    cfg = make_cfg(*TINY)
    assert records.run_id(cfg, {**SETTLED, key: value}) != records.run_id(cfg, SETTLED)


def test_precision_auto_settles_to_what_the_device_trains_in(make_cfg, monkeypatch):
    """The same config is fp32 on a CPU and bf16 on a GPU that has it: two identities, two run_ids."""
    from harness.run import settled_identity

    cfg = make_cfg(*TINY)
    assert cfg.train.precision == "auto"
    splits = {"train": "0" * 64}  # the data's content hash
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    on_gpu = settled_identity(cfg, torch.device("cuda", 0), splits)
    on_cpu = settled_identity(cfg, torch.device("cpu"), splits)
    assert (on_gpu["device_type"], on_gpu["precision"]) == ("cuda", "bf16")
    assert (on_cpu["device_type"], on_cpu["precision"]) == ("cpu", "fp32")
    assert records.run_id(cfg, on_gpu) != records.run_id(cfg, on_cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert settled_identity(cfg, torch.device("cuda", 0), splits)["precision"] == "fp32"
    cfg.train.precision = "fp16"
    assert settled_identity(cfg, torch.device("cuda", 0), splits)["precision"] == "fp16"


def test_changed_data_under_the_same_config_is_a_new_run_not_a_skip(make_cfg, tmp_path):
    """A data file edited under the same config: its content hash (read through the data cache, keyed by the
    file's bytes) changes the run's identity, so the edited data is trained on, not skipped as done."""
    import json

    def write(flip_first: bool) -> None:
        for split, n in (("train", 24), ("validation", 8), ("test", 8)):
            rows = [{"text": f"review {i} of {split}", "label": i % 2} for i in range(n)]
            if flip_first and split == "train":
                rows[0]["label"] = 1 - rows[0]["label"]
            (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    files = "{" + ",".join(f"{s}:{tmp_path / s}.jsonl" for s in ("train", "validation", "test")) + "}"
    cfg = make_cfg(*TINY, "task.generator=null", f"task.data_files={files}")
    write(flip_first=False)
    first = run_one(cfg)
    assert run_one(cfg)["finished_at"] == first["finished_at"]  # same data: skipped
    write(flip_first=True)
    second = run_one(cfg)
    assert second["run_id"] != first["run_id"] and second["data_sha256"]["train"] != first["data_sha256"]["train"]
    assert second["data_sha256"]["test"] == first["data_sha256"]["test"]
    assert second["identity"]["data_sha256"] != first["identity"]["data_sha256"]
    assert second["identity"]["device_type"] == "cpu" and second["identity"]["precision"] == "fp32"


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
    memory = record["memory"]
    assert memory["source"] == "linux_vmhwm" and memory["device"] == "cpu" and memory["gpu"] is None
    for phase in ("train", "eval"):
        assert memory[f"{phase}_peak_bytes"] >= memory["baseline_bytes"] > 0
        above = memory[f"{phase}_peak_bytes"] - memory["baseline_bytes"]
        assert memory[f"{phase}_peak_above_baseline_bytes"] == above
    # fp32 weights: 4 bytes a parameter, the head's frozen original (kept by PEFT) included, plus BERT's two
    # int64 index buffers of 512 positions; nothing else is held beside the model
    params = record["params"]
    assert memory["weights_bytes"] == 4 * (params["total"] + params["head"]) + 2 * 8 * 512
    assert memory["auxiliary_weights_bytes"] == 0 and memory["frozen_models_bytes"] == 0
    assert {"optimizer", "precision"} <= set(memory)
    assert record["rank_allocation"] is None
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
    failed = records.read_record(records.record_path(cfg.results_dir, run_id_of(cfg)))
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


def test_a_fitted_run_is_the_whole_record_and_the_builder_reads_no_trainer(make_cfg):
    """records.fitted_fields alone turns an objective's typed result into the record: every required field,
    the sections in their order, and the files written beside it appended last (as run records always had)."""
    from torch import nn

    from harness.objectives.base import FittedRun, ModelSizes, Spending, TrainerSchedule

    cfg = make_cfg(*TINY)
    record = records.started_record(cfg, "0123456789abcdef", SETTLED)
    record["environment"] = {"gpu": None}
    sizes = ModelSizes(params={"method": 10, "head": 2, "total": 100}, weights_bytes=400, auxiliary_weights_bytes=0)
    record.update(records.wrapped_fields(sizes))
    assert record["memory"] == {"weights_bytes": 400, "auxiliary_weights_bytes": 0}  # what a failed run keeps
    spent = Spending(
        steps=2,
        train_tokens=100,
        seconds=4.0,
        eval_seconds_during_training=1.0,
        stop_reason="max_steps",
        samples=16,
        data_order_sha256="ab" * 32,
        by_objective={"rollout_tokens": 7},
    )
    fitted = FittedRun(
        model=nn.Linear(2, 2),
        sizes=sizes,
        held_weights_bytes=1000,
        metrics={"validation": {"accuracy": 0.75}, "test": {"accuracy": 0.5}},
        memory={"source": "linux_vmhwm"},
        final_eval_seconds=2.0,
        spent=spent,
        learning_curve=[{"step": 2, "loss": 0.5}],
        rank_allocation=None,
        schedule=TrainerSchedule(lr_scheduler="linear", warmup_steps=0, data_seed=0),
    )
    saved = records.SavedFiles(trained_bytes=123, artifact_dir=None, samples_file=None)
    record.update(records.fitted_fields(record, cfg, fitted, saved))
    assert records.missing_fields(record) == []
    assert list(record)[-3:] == ["trained_bytes", "artifact_dir", "samples_file"]
    assert record["primary_metric"] == {"name": "accuracy", "higher_is_better": True, "validation": 0.75, "test": 0.5}
    memory = record["memory"]
    assert list(memory)[:3] == ["source", "device", "gpu"] and memory["device"] == "cpu"
    assert (memory["frozen_models_bytes"], memory["held_weights_bytes"]) == (600, 1000)
    assert record["time"] == {
        "train_seconds": 4.0,
        "eval_seconds": 3.0,
        "final_eval_seconds": 2.0,
        "train_tokens_per_second": 25.0,
    }
    assert list(record["compute"]) == [
        "steps",
        "train_tokens",
        "seconds",
        "eval_seconds_during_training",
        "stop_reason",
        "samples",
        "data_order_sha256",
        "rollout_tokens",
    ]
    assert record["training"]["lr_scheduler"] == "linear" and record["training"]["data_seed"] == 0
    json.dumps(record)
