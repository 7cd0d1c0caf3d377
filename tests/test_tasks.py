"""Tasks as units in tasks/: each composes, validates and has a card; metrics take their direction from their
module; recorded configs are unchanged; a task from local files is one short YAML inheriting a base."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO, SHARED_DATA, TINY, compose_config, run_cli_with
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from harness.config import ConfigError, primary_metric, validate, validate_task
from harness.data import load_task
from harness.data.catalog import TASKS_DIR, register_tasks, task_names
from harness.data.spec import TaskSpec, metric_entries
from harness.metrics import higher_is_better

CARD_FIELDS = ("Measures", "Type and metric", "Splits", "Sizes", "License", "Source")
README_TASK = re.compile(r"```yaml\n# tasks/(\w+)\.yaml\n(.*?)```", re.S)
RTE = SHARED_DATA / "rte"


@pytest.mark.parametrize("name", task_names())
def test_every_task_composes_validates_and_has_a_card(name):
    cfg = compose_config([f"task={name}"])
    assert cfg.task.name == name
    TaskSpec.from_config(cfg.task).check()
    card = (TASKS_DIR / f"{name}.md").read_text()
    assert card.startswith(f"# {name}: ") and all(f"**{field}**" in card for field in CARD_FIELDS)


def test_an_unknown_task_is_hydras_error_listing_the_tasks():
    with pytest.raises(MissingConfigException, match="Could not find 'task/nope'") as caught:
        compose_config(["task=nope"])
    assert "sst2" in str(caught.value) and "_local_classification" in str(caught.value)


def test_metric_directions_are_declared_by_the_metric_modules():
    assert [higher_is_better(m) for m in ("accuracy", "f1", "matthews_correlation", "exact_match", "loss")] == [
        True,
        True,
        True,
        True,
        False,
    ]
    assert higher_is_better("reward_accuracy") is True and higher_is_better("bleu") is None
    for path in TASKS_DIR.glob("*.yaml"):
        assert "higher_is_better" not in path.read_text(), f"{path.name} states a direction its metric declares"
    metrics = OmegaConf.to_container(compose_config(["task=gsm8k"]).task.metrics)
    assert metrics == [{"name": "exact_match", "higher_is_better": True}, {"name": "loss", "higher_is_better": False}]


def test_a_task_names_metrics_and_may_override_a_direction():
    named = compose_config(["task=mrpc", "task.metrics=[accuracy, f1]", "task.primary_metric=f1"])
    validate_task(named.task)
    assert primary_metric(named) == {"name": "f1", "higher_is_better": True}
    assert metric_entries(named.task.metrics)[0] == {"name": "accuracy", "higher_is_better": True}
    overridden = compose_config(
        ["task=gsm8k", "task.metrics=[{name: loss, higher_is_better: true}]", "task.primary_metric=loss"]
    )
    assert primary_metric(overridden) == {"name": "loss", "higher_is_better": True}


def test_a_key_the_task_spec_does_not_define_is_refused_with_the_allowed_keys():
    with pytest.raises(ConfigError) as caught:
        validate_task(compose_config(["task=sst2", "+task.text_colum=sentence"]).task)
    assert caught.value.key == "task.text_colum" and "text_column" in str(caught.value)


def test_recorded_glue_runs_keep_their_task_config():
    """The run_id hashes the composed config: the committed GLUE records' task configs compose unchanged."""
    paths = sorted((REPO / "results" / "glue_cpu" / "runs").glob("*.json"))
    if not paths:
        pytest.skip("no committed results/glue_cpu records")
    for path in paths:
        recorded = json.loads(path.read_text())["config"]["task"]
        cfg = compose_config([f"task={recorded['name']}", f"task.validation_size={recorded['validation_size']}"])
        composed = OmegaConf.to_container(cfg.task, resolve=True)
        composed["local"].pop("root")  # not part of a run's identity
        assert composed == recorded, path.name


def _readme_task() -> tuple[str, str]:
    match = README_TASK.search((REPO / "README.md").read_text())
    assert match, "README.md shows no ```yaml block starting with # tasks/<name>.yaml"
    return match.group(1), match.group(2)


def test_the_readme_local_tsv_task_is_one_short_file_that_reads_rte(tmp_path, monkeypatch):
    name, body = _readme_task()
    assert len(body.strip().splitlines()) + 1 <= 10
    if not (RTE / "train.tsv").is_file():
        pytest.skip(f"no {RTE}/train.tsv")
    (tmp_path / f"{name}.yaml").write_text(body)
    register_tasks(tmp_path)  # as every file in tasks/ is
    monkeypatch.chdir(tmp_path)  # its relative data_dir is the project's, not the working directory's
    cfg = compose_config([f"task={name}"])
    validate(cfg)
    assert cfg.objective.name == "cls"
    splits = load_task(cfg.task)
    assert {s: len(splits[s]) for s in splits} == {"train": 2240, "validation": 250, "test": 277}  # as task=rte
    assert splits["test"].column_names == ["text", "text_pair", "label"]
    assert splits["test"].features["label"].names == ["entailment", "not_entailment"]


def test_the_readme_local_tsv_task_trains_end_to_end(tmp_path):
    """harness-run on the README's task, found in a task/ folder on Hydra's search path, in a fresh process."""
    name, body = _readme_task()
    if not (RTE / "train.tsv").is_file():
        pytest.skip(f"no {RTE}/train.tsv")
    folder = tmp_path / "configs" / "task"
    folder.mkdir(parents=True)
    (folder / f"{name}.yaml").write_text(body)
    tiny = [o for o in TINY if not o.startswith("task.")]
    result = run_cli_with(
        tmp_path / "results", tiny, f"task={name}", f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "method=lora"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = (tmp_path / "results" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "success" and record["task"] == name
    assert record["primary_metric"]["name"] == "accuracy" and record["primary_metric"]["higher_is_better"] is True
    assert record["config"]["task"]["data_dir"] == "../shared/data/rte"


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_local_instruction_and_preference_bases(tmp_path):
    qa = _jsonl(tmp_path / "qa.jsonl", [{"question": f"What is {i} + 1?", "solution": str(i + 1)} for i in range(30)])
    dialogues = [
        {"chosen": f"\n\nHuman: Hi {i}?\n\nAssistant: Hello.", "rejected": f"\n\nHuman: Hi {i}?\n\nAssistant: Go away."}
        for i in range(30)
    ]
    pairs = _jsonl(tmp_path / "pairs.jsonl", dialogues)
    (tmp_path / "local_qa.yaml").write_text(
        f"defaults: [_local_instruction, _self_]\nname: local_qa\ndata_files: {qa}\n"
        "prompt_column: question\ncompletion_column: solution\nvalidation_size: 5\ntest_size: 5\n"
    )
    (tmp_path / "local_pairs.yaml").write_text(
        f"defaults: [_local_preference, _self_]\nname: local_pairs\ndata_files: {pairs}\n"
        'shared_prompt_marker: "\\n\\nAssistant:"\nvalidation_size: 5\ntest_size: 5\n'
    )
    register_tasks(tmp_path)
    for name, objective, columns in (
        ("local_qa", "sft", ["prompt", "completion"]),
        ("local_pairs", "dpo", ["prompt", "chosen", "rejected"]),
    ):
        cfg = compose_config([f"task={name}"])
        validate_task(cfg.task)
        assert cfg.objective.name == objective
        splits = load_task(cfg.task)
        assert [len(splits[s]) for s in ("train", "validation", "test")] == [20, 5, 5]
        assert sorted(splits["train"].column_names) == sorted(columns)
    assert splits["train"][0]["chosen"] == "Hello." and splits["train"][0]["prompt"].endswith("Assistant:")
