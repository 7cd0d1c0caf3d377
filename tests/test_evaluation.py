"""harness-eval (harness.evaluation): lm-evaluation-harness on kept runs, scores in sidecars, columns in the report.

The GSM8K slice is the shared copy's first ten questions (skipped where it is absent). A random tiny model
scores 0, so the scoring path is also shown to give a nonzero score, on a model that answers by rule.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA, compose_config
from test_export import TINY_LM as KEPT_TINY_LM

from harness import evaluation, records
from harness.report import cli as report_cli
from harness.run import execute, prepare

GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_file(), reason=f"{GSM8K} absent")
TINY_SFT = [*KEPT_TINY_LM, "task=arithmetic", "method=lora"]  # a kept LoRA run of the tiny Llama
QUESTIONS = 10
# Zero-shot: the slice needs the test file alone (the task's default is lm-eval's five examples from train).
SLICE = ["--tasks", "harness_gsm8k", "--limit", str(QUESTIONS), "--data-root", str(SHARED_DATA), "--num-fewshot", "0"]
COLUMN = "harness_gsm8k EM [strict-match] (lm-eval)"


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A kept 2-step SFT LoRA run of the tiny Llama: its results folder and record."""
    results = tmp_path_factory.mktemp("eval") / "results"
    record = execute(prepare(compose_config([*TINY_SFT, f"results_dir={results}"])))
    assert record["status"] == "success", record.get("error")
    return results, record


def _copy_run(results: Path, record: dict, run_id: str) -> None:
    """The run again under another run_id, its kept folder copied: a second kept run without training twice."""
    copy = {**record, "run_id": run_id, "artifact_dir": str(results / "artifacts" / run_id)}
    shutil.copytree(record["artifact_dir"], copy["artifact_dir"])
    records.write_record(records.record_path(results, run_id), copy)


@needs_gsm8k
def test_harness_eval_scores_kept_runs_into_sidecars_that_the_report_shows(kept, capsys):
    """Ten GSM8K questions through lm-eval's HFLM; a run whose kept adapter is torn fails alone, after the
    others' sidecars are written, and the records are never rewritten."""
    results, record = kept
    good = record["run_id"]
    _copy_run(results, record, "0000torn00000000")
    (results / "artifacts" / "0000torn00000000" / "adapter_model.safetensors").write_bytes(b"torn")
    record_bytes = records.record_path(results, good).read_bytes()

    assert evaluation.main([str(results), "--runs", "0000torn00000000", good, *SLICE, "--batch-size", "5"]) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        next(line for line in err.splitlines() if line.startswith("error: run 0000torn00000000: "))
    ]
    assert not records.sidecar_path(results, "0000torn00000000").exists()
    assert records.record_path(results, good).read_bytes() == record_bytes

    sidecar = json.loads(records.sidecar_path(results, good).read_text())
    entry = sidecar["tasks"]["harness_gsm8k"]
    assert entry["limit"] == entry["n_samples"] == QUESTIONS and entry["num_fewshot"] == 0
    assert entry["lm_eval_version"] and entry["evaluated_at"]
    assert entry["data"]["dataset_kwargs"]["data_files"]["test"] == str(GSM8K.resolve())
    assert entry["data"]["data_sha256"]["test"] == hashlib.sha256(GSM8K.read_bytes()).hexdigest()
    assert [s["doc_id"] for s in entry["samples"]] == list(range(QUESTIONS))
    targets = [json.loads(line)["answer"] for line in GSM8K.read_text().splitlines()[:QUESTIONS]]
    assert [s["target"] for s in entry["samples"]] == targets
    for score in entry["scores"]:  # each score is the mean of the per-question scores lm-eval logged
        per_question = [s["exact_match"][score["filter"]] for s in entry["samples"]]
        assert score["value"] == pytest.approx(sum(per_question) / QUESTIONS)
        assert score["value"] == 0.0  # a random model never writes the answer
    assert {s["filter"] for s in entry["scores"]} == {"strict-match", "flexible-extract"}
    assert all(s["generation"] for s in entry["samples"])  # what the model generated, recorded

    assert report_cli.main([str(results), "--formats", "md,csv"]) == 0
    report = (results / "report" / "report.md").read_text()
    assert COLUMN in report and "examples scored: harness_gsm8k 10" in report
    assert "skipped" not in capsys.readouterr().err  # the sidecar is not taken for a broken record


class RuleAnswerer:
    """An lm-eval model that answers GSM8K by rule: the reference answer (``#### <n>``) on even-numbered
    questions, ``#### -1`` on odd ones. What it scores is known beforehand, so lm-eval's filters and metric,
    the task YAML and the sidecar are checked end to end on a nonzero score."""

    def __new__(cls):
        from lm_eval.api.model import LM

        class Answerer(LM):
            def generate_until(self, requests, disable_tqdm: bool = False):
                return [self.answer(r.doc, r.doc_id) for r in requests]

            @staticmethod
            def answer(doc, doc_id: int) -> str:
                final = doc["answer"].split("####")[-1].strip() if doc_id % 2 == 0 else "-1"
                return f" She works it out step by step.\n#### {final}"

            def loglikelihood(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

        return Answerer()


@needs_gsm8k
def test_the_scoring_path_gives_the_score_of_what_the_model_answered(kept):
    results, record = kept
    manager = evaluation.task_manager(["harness_gsm8k"])
    specs = evaluation.task_specs(["harness_gsm8k"], manager, SHARED_DATA, 0)
    entries = evaluation.task_entries(evaluation.score(RuleAnswerer(), specs, manager, QUESTIONS, 0), QUESTIONS, 1)
    entry = entries["harness_gsm8k"]
    assert {s["filter"]: s["value"] for s in entry["scores"]} == {"strict-match": 0.5, "flexible-extract": 0.5}
    for sample in entry["samples"]:  # the filters extracted the number the model wrote
        written = sample["generation"].split("#### ")[-1]
        assert sample["filtered"] == {"strict-match": written, "flexible-extract": written}
        assert sample["exact_match"]["strict-match"] == float(sample["doc_id"] % 2 == 0)
    evaluation.write_scores(results, record, entries)
    assert report_cli.main([str(results), "--formats", "md"]) == 0
    assert _report_cell(results) == "0.500"

    # A group's aggregate among lm-eval's results (no config, no sample counts of its own) is not a task entry.
    results_with_group = evaluation.score(RuleAnswerer(), specs, manager, QUESTIONS, 0)
    results_with_group["results"]["a_group"] = {"alias": "a_group", "exact_match,strict-match": 0.5}
    assert list(evaluation.task_entries(results_with_group, QUESTIONS, 1)) == ["harness_gsm8k"]

    # A forced rerun of the run is another training: the scores of the model it replaced are not its own.
    rerun = {**record, "finished_at": "2099-01-01T00:00:00+00:00"}
    records.write_record(records.record_path(results, record["run_id"]), rerun)
    try:
        assert report_cli.main([str(results), "--formats", "md"]) == 0
        assert COLUMN not in (results / "report" / "report.md").read_text()
    finally:
        records.write_record(records.record_path(results, record["run_id"]), record)


def _report_cell(results: Path, label: str = "lora") -> str:
    summary = (results / "report" / "report.md").read_text()
    row = next(line for line in summary.splitlines() if line.startswith(f"| {label} |"))
    header = next(line for line in summary.splitlines() if COLUMN in line)
    return dict(zip(header.split("|"), row.split("|"), strict=True))[f" {COLUMN} "].strip()


def test_scores_under_other_settings_are_never_averaged_and_fewer_evaluated_seeds_are_said():
    from harness.report import columns, summary

    key = "lm_eval|harness_gsm8k|exact_match|strict-match"
    row = {key: 0.4, f"{key}|std": 0.1, f"{key}|setting": "mixed", "forgetting_text": None}
    assert math.isnan(summary._comparable_forgetting(row)[key])
    assert columns.mean_std_of_evaluated(0.25, float("nan"), 1, 3, 3) == "0.250 (1 of 3 seeds)"
    assert columns.mean_std_of_evaluated(0.25, 0.05, 3, 3, 3) == "0.250 ± 0.050"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--runs", "0123456789abcdef", *SLICE], "--runs: no usable run '0123456789abcdef' in "),
        (["--runs", "notkept000000000", *SLICE], "--runs: run notkept000000000 kept no model"),
        (["--tasks", "gsm8k_nope", "--limit", "2"], "--tasks: unknown lm-eval task 'gsm8k_nope'; shipped here: "),
        (["--tasks", "harness_gsm8k", "--data-root", "/nonexistent"], "--data-root: /nonexistent/gsm8k/test.jsonl"),
        (["--tasks", "harness_gsm8k", "--limit", "0"], "--limit: must be a positive integer (got 0)"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(kept, capsys, no_model_load, arguments, message):
    results, record = kept
    if not records.record_path(results, "notkept000000000").exists():
        records.write_record(
            records.record_path(results, "notkept000000000"),
            {**record, "run_id": "notkept000000000", "artifact_dir": None},
        )
    assert evaluation.main([str(results), *arguments]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err


GSM8K_TRAIN = SHARED_DATA / "gsm8k" / "train.jsonl"


@pytest.mark.slow
@pytest.mark.skipif(not (GSM8K.is_file() and GSM8K_TRAIN.is_file()), reason="the shared GSM8K copy is absent")
def test_harness_eval_on_a_kept_smollm2_lora_run(tmp_path, capsys):
    """The embedded SmolLM2-135M-Instruct after two SFT LoRA steps, on ten GSM8K questions with lm-eval's
    standard five examples from the train split; the score and the time are printed for the record."""
    results = tmp_path / "results"
    overrides = [*TINY_SFT, "model=smollm2_135m", f"results_dir={results}"]
    record = execute(prepare(compose_config(overrides)))
    assert record["status"] == "success", record.get("error")
    started = time.monotonic()
    arguments = ["--tasks", "harness_gsm8k", "--limit", str(QUESTIONS), "--data-root", str(SHARED_DATA)]
    assert evaluation.main([str(results), *arguments, "--batch-size", "10"]) == 0
    seconds = time.monotonic() - started
    entry = json.loads(records.sidecar_path(results, record["run_id"]).read_text())["tasks"]["harness_gsm8k"]
    assert entry["n_samples"] == QUESTIONS and entry["num_fewshot"] == 5
    scores = {s["filter"]: s["value"] for s in entry["scores"]}
    for score in entry["scores"]:
        per_question = [s["exact_match"][score["filter"]] for s in entry["samples"]]
        assert score["value"] == pytest.approx(sum(per_question) / QUESTIONS)
    with capsys.disabled():
        print(f"\nSmolLM2-135M + 2 SFT LoRA steps, GSM8K 5-shot, {QUESTIONS} questions: {scores}, {seconds:.0f} s")
    assert report_cli.main([str(results), "--formats", "md"]) == 0
    assert COLUMN in (results / "report" / "report.md").read_text()
