"""Budgets: every stop rule is enforced, spending is recorded, data order is shared."""

from __future__ import annotations

import math
import time

import pytest
from conftest import TINY, run_id_of
from omegaconf import OmegaConf
from transformers import TrainerControl, TrainerState, TrainingArguments

from harness import records
from harness.budget import BudgetCallback, NonFiniteLossError
from harness.cli import run_one

LONGER = [*TINY, "budget.max_steps=6", "budget.eval_steps=3"]


def test_token_budget_stops_training_early(make_cfg):
    record = run_one(make_cfg(*LONGER, "budget.max_train_tokens=150"))
    spent = record["compute"]
    assert spent["stop_reason"] == "max_train_tokens"
    assert spent["train_tokens"] >= 150
    assert spent["steps"] < 6


def test_token_budget_alone_is_a_stop_rule(make_cfg):
    record = run_one(make_cfg(*TINY, "budget.max_steps=null", "budget.max_train_tokens=200"))
    assert record["compute"]["stop_reason"] == "max_train_tokens"
    assert record["training"]["lr_scheduler"] == "constant"  # no step count to decay over


def test_time_budget_stops_training(make_cfg):
    record = run_one(make_cfg(*TINY, "budget.max_steps=100000", "budget.max_time_s=1.5", "budget.eval_steps=1000"))
    assert record["compute"]["stop_reason"] == "max_time_s"
    assert 1.5 <= record["compute"]["seconds"] < 10


def test_spent_tokens_count_only_non_padding(make_cfg):
    record = run_one(make_cfg(*TINY))
    steps, batch = record["compute"]["steps"], record["training"]["batch_size"]
    assert record["compute"]["train_tokens"] < steps * batch * record["training"]["max_seq_length"]


def test_all_methods_see_the_same_batches_in_the_same_order(make_cfg):
    fingerprints = {
        m: run_one(make_cfg(*TINY, f"method={m}"))["compute"]["data_order_sha256"]
        for m in ("full", "lora", "prefix", "adapter_houlsby")
    }
    assert len(set(fingerprints.values())) == 1, fingerprints
    other_seed = run_one(make_cfg(*TINY, "method=lora", "seed=1"))["compute"]["data_order_sha256"]
    assert other_seed != fingerprints["lora"]


def test_non_finite_loss_fails_the_run():
    callback = BudgetCallback(OmegaConf.create({"max_steps": 5}))
    state, control = TrainerState(), TrainerControl()
    args = TrainingArguments(output_dir="unused", report_to=[])
    callback.on_train_begin(args, state, control)
    callback.on_log(args, state, control, logs={"loss": 0.7})
    with pytest.raises(NonFiniteLossError):
        callback.on_log(args, state, control, logs={"loss": math.nan})


def test_diverging_run_is_recorded_as_failed(make_cfg):
    cfg = make_cfg(
        *TINY, "method=full", "method.lr=1e30", "train.max_grad_norm=1e30", "budget.max_steps=4", "budget.eval_steps=1"
    )
    with pytest.raises(SystemExit):
        run_one(cfg)
    failed = records.read_record(records.record_path(cfg.results_dir, run_id_of(cfg)))
    assert failed["status"] == "failed" and "NonFiniteLossError" in failed["error"]


def _training_callback(budget: dict, step: int) -> tuple:
    """A BudgetCallback whose training began, with the Trainer arguments and a state at ``step``."""
    callback = BudgetCallback(OmegaConf.create(budget))
    state, control = TrainerState(max_steps=budget["max_steps"], global_step=step), TrainerControl()
    args = TrainingArguments(output_dir="unused", report_to=[])
    callback.on_train_begin(args, state, control)
    return callback, args, state, control


def test_each_curve_point_is_logged_with_its_progress(caplog):
    """A minutes-long run on a CPU says where it is at every logging step."""
    callback, args, state, control = _training_callback({"max_steps": 40}, step=20)
    with caplog.at_level("INFO", logger="harness"):
        callback.on_log(args, state, control, logs={"loss": 1.63427, "learning_rate": 1e-4})
        callback.on_log(args, state, control, logs={"eval_exact_match": 0.14, "eval_runtime": 3.0})
    assert [r.getMessage() for r in caplog.records] == ["step 20/40: loss 1.634", "step 20/40: eval_exact_match 0.14"]


def test_the_final_validation_closes_a_curve_cut_short_by_the_clock():
    """A run stopped by max_time_s at step 56 with evaluations every 50 steps: its curve must reach step 56,
    once, and only with validation figures."""
    callback, args, state, control = _training_callback({"max_steps": 300, "max_time_s": 1}, step=50)
    with callback.paused():  # a periodic evaluation window
        time.sleep(0.05)
        callback.on_log(args, state, control, logs={"eval_exact_match": 0.3, "eval_runtime": 9.0})
    state.global_step = 56
    callback.on_train_end(args, state, control)
    with callback.paused():  # the final passes
        time.sleep(0.05)
        callback.on_log(args, state, control, logs={"eval_exact_match": 0.49, "eval_runtime": 9.0})
        callback.on_log(args, state, control, logs={"test_exact_match": 0.42, "test_runtime": 9.0})
        callback.on_log(args, state, control, logs={"eval_exact_match": 0.49})  # a second pass adds nothing
    assert callback.learning_curve == [{"step": 50, "eval_exact_match": 0.3}, {"step": 56, "eval_exact_match": 0.49}]
    # the periodic window's wall time (not the logged eval_runtime); the final passes are timed as final evaluation
    assert 0.05 <= callback.eval_seconds < 0.5


def test_a_curve_whose_last_evaluation_is_the_final_step_gains_no_duplicate():
    callback, args, state, control = _training_callback({"max_steps": 50}, step=50)
    callback.on_log(args, state, control, logs={"loss": 0.5, "eval_exact_match": 0.3})
    callback.on_train_end(args, state, control)
    callback.on_log(args, state, control, logs={"eval_exact_match": 0.3, "eval_runtime": 9.0})
    assert callback.learning_curve == [{"step": 50, "loss": 0.5, "eval_exact_match": 0.3}]


@pytest.mark.parametrize(("steps", "passes"), [(4, 3), (5, 4)])
def test_the_final_validation_reuses_a_pass_training_ran_at_its_last_step(make_cfg, monkeypatch, steps, passes):
    """Steps 0, 2, 4 are validated during training: when training ends on step 4 that pass is the final one
    (three passes, its scores the record's); ending on step 5 needs a fourth."""
    from transformers import Trainer

    prefixes = []
    original = Trainer.evaluate

    def counted(self, *args, **kwargs):
        prefixes.append(kwargs.get("metric_key_prefix", "eval"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    record = run_one(make_cfg(*TINY, f"budget.max_steps={steps}", "budget.eval_steps=2"))
    assert prefixes.count("eval") == passes and prefixes.count("test") == 1
    last = [p for p in record["learning_curve"] if "eval_accuracy" in p][-1]
    assert last["step"] == steps and record["metrics"]["validation"]["accuracy"] == last["eval_accuracy"]
    assert record["metrics"]["validation"]["loss"] == last["eval_loss"]
