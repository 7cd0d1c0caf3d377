"""Bad input: one line naming the key, non-zero exit, and no model loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY

from harness import models
from harness.config import ConfigError
from harness.run import prepare

HARNESS_RUN = [sys.executable, "-m", "harness.cli"]


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch):
    """Any attempt to load weights during validation fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before validation finished")

    monkeypatch.setattr(models, "load_classifier", refuse)


def _error(make_cfg, *overrides: str, base: tuple[str, ...] = tuple(TINY)) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        prepare(make_cfg(*base, *overrides))
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["method=lora", "method.r=0"], "method.r", "positive integer"),
        (["method=lora", "method.r=-3"], "method.r", "positive integer"),
        (["method=prefix", "method.num_virtual_tokens=0"], "method.num_virtual_tokens", "positive integer"),
        (["method=adapter_houlsby", "method.reduction_factor=0"], "method.reduction_factor", "positive integer"),
        (["method=lora", "method.lr=0"], "method.lr", "positive"),
        (["method=full", "method.lr=-1e-5"], "method.lr", "positive"),
        (["method=lora", "method.lora_dropout=1.5"], "method.lora_dropout", "[0, 1)"),
        (["method=lora", "+method.rank=8"], "method.rank", "allowed: "),
        (["method=lora", "method.target_modules=[query,nonexistent]"], "method.target_modules", "'nonexistent'"),
        (["method=adapter_houlsby", "method.sites=[everywhere]"], "method.sites", "attention_output"),
        (["method=full", "model.quantization=4bit"], "model.quantization", "PEFT method"),
        (["method=lora", "method.quantization=2bit"], "method.quantization", "4bit, 8bit"),
        (["budget.max_steps=null"], "budget", "no stop rule"),
        (["budget.max_steps=0"], "budget.max_steps", "positive"),
        (["budget.batch_size=0"], "budget.batch_size", "positive integer"),
        (["+budget.eval_batch_size=0"], "budget.eval_batch_size", "positive integer or null"),
        (["+task.stop_strings=stop"], "task.stop_strings", "must be a non-empty list of non-empty strings"),
        (["+task.stop_strings=['\\n', '']"], "task.stop_strings", "must be a non-empty list of non-empty strings"),
        (["+task.stop_strings=[]"], "task.stop_strings", "must be a non-empty list of non-empty strings"),
        (["task.text_column=sentence"], "task.text_column", "available: text, label"),
        (
            ["task=toy_entailment", "task.text_pair_column=hypo"],
            "task.text_pair_column",
            "available: premise, hypothesis, label",
        ),
        (["task.primary_metric=f2"], "task.primary_metric", "allowed: accuracy"),
        (
            ["task.metrics=[{name: reward_accuracy, higher_is_better: true}]"],
            "task.metrics[0].name",
            "allowed: accuracy, f1, matthews_correlation, loss",
        ),
        (
            ["task.metrics=[{name: bleu, higher_is_better: true}]"],
            "task.metrics[0].name",
            "allowed: accuracy, f1, matthews_correlation, loss",
        ),
        (["train.precision=fp8"], "train.precision", "allowed: auto, fp32, bf16, fp16"),
        (["train.optimizer=sgdd"], "train.optimizer", "adamw_torch"),
        (["seed=abc"], "seed", "integer"),
    ],
)
def test_bad_value_names_key_and_allowed_values(make_cfg, overrides, key, hint):
    error = _error(make_cfg, *overrides)
    assert error.key == key
    assert hint in str(error)


def test_unreadable_data_file(make_cfg, tmp_path):
    error = _error(make_cfg, f"task.data_files={tmp_path / 'missing.tsv'}")
    assert error.key == "task.data_files" and "not found" in str(error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission(make_cfg, tmp_path):
    locked = tmp_path / "train.tsv"
    locked.write_text("sentence\tlabel\nok\t1\n")
    locked.chmod(0)
    assert _error(make_cfg, f"task.data_files={locked}").key == "task.data_files"


def test_unparseable_data_file(make_cfg, tmp_path):
    broken = tmp_path / "train.json"
    broken.write_text("{not json")
    error = _error(make_cfg, f"task.data_files={broken}")
    assert error.key == "task.data_files" and "cannot read" in str(error)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*HARNESS_RUN, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)


def test_cli_unknown_method_is_one_line_with_the_options(tmp_path):
    start = time.perf_counter()
    result = _cli("method=nope", f"results_dir={tmp_path}")
    assert time.perf_counter() - start < 15
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: method: no option 'nope'; allowed: "
        + ", ".join(sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml")))
    ]


def test_cli_bad_rank_is_one_line_naming_the_key(tmp_path):
    start = time.perf_counter()
    result = _cli("method=lora", "method.r=0", f"results_dir={tmp_path}")
    assert time.perf_counter() - start < 15
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: method.r: must be a positive integer (got 0)"]
    assert not (tmp_path / "runs").exists()


def test_cli_old_preset_group_name_is_one_line_naming_the_new_one(tmp_path):
    result = _cli("-m", "study=demo", f"results_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: study: the presets' group is named 'experiment' now (conf/experiment/); use experiment=demo"
    ]


def test_hub_task_offline_without_local_files_is_one_line(make_cfg):
    error = _error(make_cfg, "task=sst2", base=())
    assert error.key == "task.hub_id" and "task.data_dir" in str(error)


def test_hub_model_offline_is_one_line(make_cfg):
    error = _error(make_cfg, "model=roberta_base")
    assert error.key == "model.pretrained" and "FacebookAI/roberta-base" in str(error)
