"""Hydra multiruns: a grid completes, reruns skip, one failure does not stop the sweep."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli as _multirun

from harness import records


def _records(results_dir) -> dict[str, dict]:
    return {r["run_id"]: r for r in records.load_records(results_dir)}


@pytest.mark.slow  # about 20 s; the study sweeper test also checks that a rerun trains nothing
def test_grid_completes_and_a_second_invocation_trains_nothing(tmp_path):
    first = _multirun(tmp_path, "method=lora,ia3", "seed=0,1")
    assert first.returncode == 0, first.stderr[-2000:]
    done = _records(tmp_path)
    assert len(done) == 4 and {r["status"] for r in done.values()} == {"success"}
    assert {(r["method"], r["seed"]) for r in done.values()} == {("lora", 0), ("lora", 1), ("ia3", 0), ("ia3", 1)}

    second = _multirun(tmp_path, "method=lora,ia3", "seed=0,1")
    assert second.returncode == 0
    assert second.stderr.count("already succeeded") + second.stdout.count("already succeeded") == 4
    assert {k: r["finished_at"] for k, r in _records(tmp_path).items()} == {
        k: r["finished_at"] for k, r in done.items()
    }


@pytest.mark.slow  # about 10 s; the four-scenario sweep below covers it in the default run
def test_a_failing_job_is_recorded_and_the_sweep_completes(tmp_path):
    result = _multirun(tmp_path, "method=full", "train.max_grad_norm=1e30", "method.lr=1e30,1e-4", "budget.max_steps=4")
    assert result.returncode == 0, result.stderr[-2000:]
    by_lr = {r["config"]["method"]["lr"]: r for r in _records(tmp_path).values()}
    assert by_lr[1e30]["status"] == "failed" and "NonFiniteLossError" in by_lr[1e30]["error"]
    assert by_lr[1e-4]["status"] == "success"
    json.dumps(by_lr)


@pytest.mark.slow  # about 10 s; the four-scenario sweep below covers it in the default run
def test_running_out_of_memory_is_a_failed_record_and_the_sweep_goes_on(tmp_path):
    # A 34 GB feed-forward layer under a 3 GB cap: the allocation fails inside the run, not in the kernel.
    huge = 2**28
    result = _multirun(
        tmp_path, "method=lora", "memory_limit_gb=3", f"model.config_overrides.intermediate_size=64,{huge}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    by_size = {r["config"]["model"]["config_overrides"]["intermediate_size"]: r for r in _records(tmp_path).values()}
    assert by_size[huge]["status"] == "failed" and by_size[huge]["error_kind"] == "out_of_memory"
    assert "can't allocate memory" in by_size[huge]["error"] and by_size[huge]["traceback"]
    assert by_size[64]["status"] == "success"


# One sweep, four jobs: three fail in the three ways a run can fail, one succeeds after two failures. Each job's
# delta is a config of a group "scenario" that only this test adds to Hydra's search path; jobs run in this order.
SCENARIOS = {
    # lr 1e30, unclipped: the first update sends the loss to NaN.
    "diverges": {"method": {"lr": 1e30}, "train": {"max_grad_norm": 1e30}},
    # Eight token ids for a tokenizer of 30k: the embedding lookup raises IndexError in the first forward pass.
    "raises": {"model": {"config_overrides": {"vocab_size": 8}}},
    "ok": {},
    # A 34 GB feed-forward layer, allocated when the model is built inside the run, under a 3 GB cap on the
    # process's data (a bare worker holds about 1.6 GB): the allocation fails inside the run. Last in the sweep,
    # because the basic launcher runs every job in one process and the cap stays for the jobs after it.
    "runs_out_of_memory": {"memory_limit_gb": 3, "model": {"config_overrides": {"intermediate_size": 2**28}}},
}


def test_a_diverging_an_out_of_memory_and_a_raising_job_are_recorded_by_kind_and_the_others_finish(tmp_path):
    folder = tmp_path / "scenarios" / "scenario"
    folder.mkdir(parents=True)
    for name, delta in SCENARIOS.items():
        (folder / f"{name}.yaml").write_text("# @package _global_\n" + json.dumps(delta))
    result = _multirun(
        tmp_path / "results",
        f"hydra.searchpath=[file://{tmp_path / 'scenarios'}]",
        "+scenario=" + ",".join(SCENARIOS),
        "budget.max_steps=3",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    done = list(_records(tmp_path / "results").values())
    assert len(done) == 4
    by_kind = {r.get("error_kind"): r for r in done}
    assert set(by_kind) == {None, "non_finite_loss", "exception", "out_of_memory"}
    assert by_kind[None]["status"] == "success"
    assert all(by_kind[kind]["status"] == "failed" for kind in ("non_finite_loss", "exception", "out_of_memory"))
    assert by_kind["non_finite_loss"]["config"]["method"]["lr"] == 1e30
    assert by_kind["exception"]["error"].startswith("IndexError") and by_kind["exception"]["traceback"]
    assert by_kind["out_of_memory"]["config"]["model"]["config_overrides"]["intermediate_size"] == 2**28
