"""The embedded MiniLM encoder, end to end, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from harness.cli import run_one

FEW_STEPS = [
    "model=minilm",
    "budget=tiny",
    "budget.max_steps=4",
    "budget.eval_steps=2",
    "budget.batch_size=8",
    "budget.max_eval_samples=32",
]


@pytest.mark.parametrize("task", ["toy_sentiment", "toy_entailment"])
def test_minilm_lora_few_steps(make_cfg, task):
    record = run_one(make_cfg(*FEW_STEPS, f"task={task}", "method=lora"))
    assert record["status"] == "success"
    # the real encoder (22,713,216 with its pooler), counted by hand: LoRA r=8 on query and value of 6 layers
    # is 6 x 2 x (384*8 + 8*384) = 73,728; the new head 384*2 + 2 = 770, counted once though PEFT keeps a copy
    params = record["params"]
    assert (params["method"], params["head"], params["trainable"]) == (73_728, 770, 74_498)
    assert params["total"] == 22_713_216 + 770 + 73_728
    assert record["environment"]["packages"]["transformers"].startswith("5.")


def test_minilm_qlora_loads_4bit_on_cpu(make_cfg):
    record = run_one(make_cfg(*FEW_STEPS, "method=qlora"))
    assert record["memory"]["quantization"] == "4bit"
    assert record["params"]["total"] == 22_713_216 + 770 + 73_728  # logical count, as for the unquantized model
    # yet its linear layers are stored packed: the fp32 embeddings (11.9M parameters) dominate what remains
    assert record["memory"]["weights_bytes"] < 0.65 * 22_713_216 * 4


def test_harness_run_console_script_end_to_end(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = [sys.executable, "-m", "harness.cli", *FEW_STEPS, "method=ia3", f"results_dir={tmp_path}"]
    subprocess.run(script, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    (record_file,) = (tmp_path / "runs").glob("*.json")
    assert json.loads(record_file.read_text())["status"] == "success"


@pytest.mark.slow
def test_full_fine_tuning_beats_untrained_head_by_15_points_below_ceiling(make_cfg):
    """The embedded task separates methods: far above chance, below 97%."""
    record = run_one(make_cfg("model=minilm", "task=toy_sentiment", "method=full", "budget=small"))
    untrained = record["learning_curve"][0]["eval_accuracy"]  # step-0 validation score, head untrained
    trained = record["primary_metric"]["validation"]
    assert trained - untrained >= 0.15
    assert trained <= 0.97


def test_earlier_run_in_the_same_process_does_not_hide_the_next_runs_peak(make_cfg):
    """A multirun trains several models in one process: full first, then LoRA."""
    run_one(make_cfg(*FEW_STEPS, "method=full"))
    lora = run_one(make_cfg(*FEW_STEPS, "method=lora"))
    assert lora["memory"]["train_peak_above_baseline_bytes"] > 20 * 2**20
