"""Embedded generative tasks, answer extraction, the generative metrics, and objective/task checks."""

from __future__ import annotations

import re

import pytest
from conftest import compose_config

from harness import data
from harness.config import ConfigError, validate
from harness.data.answers import extract_answer
from harness.data.prompts import fill
from harness.metrics import load_metric
from harness.run import build_objective
from tasks.generators import generative


def _solve(problem: str) -> int:
    """Recompute an arithmetic problem from its text: the generator's answer must agree."""
    count = int(re.match(r"\w+ has (\d+)", problem).group(1))
    for sentence in problem.split(". ")[1:]:
        if "doubles" in sentence:
            count *= 2
        elif m := re.search(r"(?:finds|gives \w+) (\d+) more", sentence):
            count += int(m.group(1))
        elif m := re.search(r"(?:gives away|loses) (\d+)", sentence):
            count -= int(m.group(1))
    return count


def test_arithmetic_answers_are_right_and_splits_disjoint_and_deterministic():
    task = generative.arithmetic(300, 50, 50, seed=3)
    for row in task["train"]:
        assert str(_solve(row["prompt"])) == row["answer"] == row["completion"]
    prompts = [set(task[s]["prompt"]) for s in ("train", "validation", "test")]
    assert sum(map(len, prompts)) == 400 and len(set.union(*prompts)) == 400
    assert generative.arithmetic(300, 50, 50, seed=3)["test"]["prompt"] == task["test"]["prompt"]
    assert generative.arithmetic(300, 50, 50, seed=4)["test"]["prompt"] != task["test"]["prompt"]


def test_arithmetic_steps_set_the_number_of_operations_and_bad_steps_are_refused():
    one_step = generative.arithmetic(200, 20, 20, seed=3, steps=[1])
    for row in one_step["train"]:
        assert row["prompt"].count(". ") == 2  # the start, one operation, then the question
        assert str(_solve(row["prompt"])) == row["answer"]
    multi = generative.arithmetic(200, 20, 20, seed=3)
    assert {row["prompt"].count(". ") for row in multi["train"]} == {3, 4}
    pairs = generative.arithmetic_preferences(50, 10, 10, seed=3, steps=[1])
    assert pairs["train"]["prompt"] == generative.arithmetic(50, 10, 10, seed=3, steps=[1])["train"]["prompt"]
    for bad in ([], [0], "1", [1.5], None):
        with pytest.raises(
            ValueError, match="task.generator.steps must be a non-empty list of step counts from 1 to 6"
        ):
            generative.arithmetic(10, 5, 5, steps=bad)


def test_preference_pairs_share_the_instruction_prompts_and_reject_a_wrong_answer():
    instructions = generative.arithmetic(100, 20, 20, seed=9)
    pairs = generative.arithmetic_preferences(100, 20, 20, seed=9)
    assert pairs["train"]["prompt"] == instructions["train"]["prompt"]
    assert all(r["chosen"] == r["answer"] != r["rejected"] for r in pairs["train"])
    strings = generative.string_ops_preferences(200, 20, 20)
    for row in strings["train"]:
        word = re.search(r"'(\w+)'", row["prompt"]).group(1)
        assert row["chosen"] != row["rejected"]
        if "backwards" in row["prompt"]:
            assert row["chosen"] == word[::-1]
        elif "alphabetical" in row["prompt"]:
            assert row["chosen"] == "".join(sorted(word))
        else:
            assert row["chosen"] == word[:-1] + word[-1].upper()


def test_a_generator_that_cannot_fill_its_splits_says_so():
    with pytest.raises(ValueError, match="task.generator.n_train must be a positive integer"):
        generative.string_ops(0, 1, 1)


@pytest.mark.parametrize(
    ("text", "pattern", "expected"),
    [
        ("7 - 3 = 4, so the answer is 1,234.", r"(-?\d[\d,]*)", "1234"),
        ("no digits here", r"(-?\d[\d,]*)", ""),
        ("She has 12 left.\n#### 12", r"####\s*(\S+)", "12"),
        ("'udamel'.\nThat is the word.", None, "udamel"),
        ("  ", None, ""),
    ],
)
def test_answer_extraction(text, pattern, expected):
    assert extract_answer(text, pattern) == expected


def test_prompt_templates_drop_empty_paragraphs():
    template = "{instruction}\n\n{input}"
    assert fill(template, {"instruction": "Add.", "input": "2 and 3"}) == "Add.\n\n2 and 3"
    assert fill(template, {"instruction": "Say hi.", "input": ""}) == "Say hi."


def test_generative_metrics():
    assert load_metric("exact_match").compute(predictions=["5", " 7"], references=["5", "8"])["exact_match"] == 0.5
    scores = load_metric("preference_accuracy").compute(predictions=[0.5, 0.0, -1.0, 2.0], references=[1, 1, 1, 1])
    assert scores == {"accuracy": pytest.approx((1 + 0.5 + 0 + 1) / 4), "margin": pytest.approx(0.375)}  # a tie is half


def test_tasks_choose_their_default_objective_and_the_command_line_overrides_it():
    assert compose_config(["task=toy_sentiment"]).objective.name == "cls"
    assert compose_config(["task=arithmetic"]).objective.name == "sft"
    assert compose_config(["task=arithmetic_pref"]).objective.name == "dpo"
    assert compose_config(["task=arithmetic_pref", "objective=reward"]).objective.name == "reward"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task=arithmetic", "objective=dpo"],
            "objective: 'dpo' does not train on instruction tasks; it needs a task of type preference",
        ),
        (["task=toy_sentiment", "objective=sft"], "objective: 'sft' does not train on classification tasks"),
        (["task=arithmetic_pref", "objective.beta=0"], "objective.beta: must be a positive number (got 0)"),
        (
            ["task=arithmetic_pref", "objective.loss_type=nope"],
            "objective.loss_type: got 'nope'; allowed: sigmoid, ipo, hinge, robust",
        ),
        (["task=arithmetic", "task.answer_column=null"], "task.answer_column: must name the reference-answer column"),
        (["task=arithmetic", "task.completion_column=null"], "task.completion_column: must name a column of the data"),
        (
            ["task=arithmetic", "task.answer_pattern='(unclosed'"],
            "task.answer_pattern: is not a valid regular expression",
        ),
    ],
)
def test_bad_objective_and_task_settings_are_one_line_errors(overrides, message):
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
        build_objective(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_missing_column_names_the_key_and_the_columns_present():
    cfg = compose_config(
        [
            "task=arithmetic_pref",
            "task.rejected_column=worse",
            "task.generator.n_train=10",
            "task.generator.n_validation=2",
            "task.generator.n_test=2",
        ]
    )
    with pytest.raises(
        ConfigError,
        match=r"task.rejected_column: column 'worse' not in the train data; available: prompt, chosen, rejected, answer",
    ):
        data.load_task(cfg.task)
