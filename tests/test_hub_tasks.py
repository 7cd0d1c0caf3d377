"""Hub task specs for generative objectives: composed, validated, and loaded from local files in their formats."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, compose_config

from harness import data
from harness.config import ConfigError, validate

HUB_TASKS = ["alpaca", "dolly", "gsm8k", "hh_rlhf", "ultrafeedback_binarized"]


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = {
    "alpaca": lambda i: {
        "instruction": f"Name a colour {i}.",
        "input": "" if i % 2 else f"context {i}",
        "output": "Blue.",
    },
    "dolly": lambda i: {
        "instruction": f"Summarise {i}.",
        "context": "A long text." if i % 2 else "",
        "response": "Short.",
        "category": "summarization",
    },
    "gsm8k": lambda i: {
        "question": f"Tom has {i} apples and buys 2. How many?",
        "answer": f"He has {i}+2={i + 2}.\n#### {i + 2}",
    },
    "hh_rlhf": lambda i: {
        "chosen": f"\n\nHuman: Hi {i}?\n\nAssistant: Hello, how can I help?",
        "rejected": f"\n\nHuman: Hi {i}?\n\nAssistant: Go away.",
    },
    "ultrafeedback_binarized": lambda i: {
        "prompt": f"Explain {i}.",
        "chosen": [{"role": "user", "content": f"Explain {i}."}, {"role": "assistant", "content": "Good."}],
        "rejected": [{"role": "user", "content": f"Explain {i}."}, {"role": "assistant", "content": "Bad."}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    },
}


@pytest.mark.parametrize("name", HUB_TASKS)
def test_hub_task_specs_compose_and_validate(name):
    cfg = compose_config([f"task={name}"])
    validate(cfg)
    assert cfg.objective.name == ("dpo" if cfg.task.type == "preference" else "sft")


@pytest.mark.parametrize("name", HUB_TASKS)
def test_hub_tasks_load_from_local_files_in_their_hub_format(tmp_path, name):
    rows = [ROWS[name](i) for i in range(40)]
    files = {
        "train": _write_jsonl(tmp_path / "train.jsonl", rows[:30]),
        "test": _write_jsonl(tmp_path / "test.jsonl", rows[30:]),
    }
    overrides = [
        f"task={name}",
        f"task.data_files={{train:{files['train']},test:{files['test']}}}",
        "task.validation_size=5",
        "task.train_split=train",
        "task.test_split=test",
    ]
    splits = data.load_task(compose_config(overrides).task)
    assert len(splits["validation"]) == 5 and len(splits["train"]) == 25 and len(splits["test"]) == 10
    row = splits["train"][0]
    if name in ("hh_rlhf", "ultrafeedback_binarized"):
        assert set(row) == {"prompt", "chosen", "rejected"}
    if name == "hh_rlhf":
        assert row["prompt"].startswith("Human: Hi") and row["prompt"].endswith("Assistant:")
        assert (row["chosen"], row["rejected"]) == ("Hello, how can I help?", "Go away.")
    elif name == "ultrafeedback_binarized":
        assert (row["chosen"], row["rejected"]) == ("Good.", "Bad.") and row["prompt"].startswith("Explain")
    elif name == "gsm8k":
        assert set(row) == {"prompt", "completion", "answer"}
        assert row["completion"].endswith(f"#### {row['answer']}") and row["answer"].isdigit()
    else:
        assert set(row) == {"prompt", "completion"}
        assert all("\n\n\n" not in r["prompt"] and not r["prompt"].endswith("\n") for r in splits["train"])


def test_a_single_split_dataset_gets_fixed_validation_and_test_carves(tmp_path):
    rows = [ROWS["dolly"](i) for i in range(60)]
    path = _write_jsonl(tmp_path / "dolly.jsonl", rows)
    overrides = ["task=dolly", f"task.data_files={path}", "task.validation_size=10", "task.test_size=10"]
    first = data.load_task(compose_config(overrides).task)
    again = data.load_task(compose_config(overrides).task)
    assert [len(first[s]) for s in ("train", "validation", "test")] == [40, 10, 10]
    assert first["test"]["prompt"] == again["test"]["prompt"]
    assert not set(first["test"]["prompt"]) & set(first["train"]["prompt"])


def test_hub_tasks_offline_fail_with_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^task.hub_id: cannot load 'openai/gsm8k'"):
        data.load_task(compose_config(["task=gsm8k"]).task)


@pytest.mark.parametrize("name", HUB_TASKS)
def test_real_copies_in_shared_data_load(name):
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"no local copy of {name} in {SHARED_DATA}")
    splits = data.load_task(compose_config([f"task={name}", f"task.data_dir={folder}"]).task)
    assert len(splits["train"]) > 0 and len(splits["test"]) > 0
