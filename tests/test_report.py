"""The reporting layer on synthetic records with known values: numbers, formats, failures, errors."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from harness import records
from harness.report import cli, columns, plots, render, stats, summary, table

# Hand-chosen test accuracies per method and seed.
ACCURACY = {
    "full": [0.90, 0.92, 0.94],
    "lora": [0.88, 0.91, 0.91],
    "ia3": [0.80, 0.86, 0.83],
    "prompt": [0.60, 0.62, 0.58],
}
TRAINABLE = {"full": 22_000_000, "lora": 40_000, "ia3": 17_000, "prompt": 20_000}
MEMORY_MIB = {"full": 900.0, "lora": 600.0, "ia3": 620.0, "prompt": 500.0}
HEAD = 770
PACKAGES = {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2", "trl": "1.16.0"}


def synthetic_record(
    method: str,
    seed: int,
    test: float | None,
    *,
    task="toy_sentiment",
    budget="tiny",
    role="run",
    status="success",
    higher_is_better=True,
    config_extra=None,
    tuning=None,
    **fields,
) -> dict:
    config = {
        "model": {"name": "minilm"},
        "task": {"name": task},
        "method": {"name": method, "lr": 1e-3},
        "budget": {"name": budget},
        "seed": seed,
        "role": role,
        "tuning": tuning or {},
    }
    for dotted, value in (config_extra or {}).items():
        config["method"][dotted] = value
    record = {
        "schema_version": 2,
        "status": status,
        "error": None,
        "role": role,
        "tuning": tuning or {},
        "model": "minilm",
        "task": task,
        "method": method,
        "budget": budget,
        "objective": "cls",
        "seed": seed,
        "metrics": {},
        "primary_metric": {
            "name": "accuracy" if higher_is_better else "loss",
            "higher_is_better": higher_is_better,
            "validation": None if test is None else test + 0.01,
            "test": test,
        },
        "params": {
            "method": TRAINABLE[method],
            "head": HEAD,
            "auxiliary": 0,
            "trainable": TRAINABLE[method] + HEAD,
            "total": 22_700_000,
            "method_percent": 100 * TRAINABLE[method] / 22_700_000,
        },
        "memory": {
            "source": "linux_vmhwm",
            "device": "cpu",
            "gpu": None,
            "baseline_bytes": 2**30,
            "weights_bytes": 87 * 2**20,
            "train_peak_bytes": 2**30 + MEMORY_MIB[method] * 2**20,
            "train_peak_above_baseline_bytes": MEMORY_MIB[method] * 2**20,
            "eval_peak_bytes": 2**30 + 100 * 2**20,
            "eval_peak_above_baseline_bytes": 100 * 2**20,
        },
        "time": {"train_seconds": 100.0, "eval_seconds": 5.0, "train_tokens_per_second": 1000.0},
        "compute": {"train_tokens": 100_000 if budget == "tiny" else 400_000, "steps": 150},
        "learning_curve": [
            {"step": 0, "eval_accuracy": 0.5},
            {"step": 50, "loss": 0.6},
            {"step": 50, "eval_accuracy": 0.8},
        ],
        "training": {},
        "trained_bytes": 1000,
        "config": config,
        "environment": {
            "cpu": "Test CPU",
            "cpu_count": 2,
            "device": "cpu",
            "gpu": None,
            "packages": dict(PACKAGES),
            "git_revision": "abc1234",
        },
    }
    record.update(fields)
    return with_run_id(record)


def with_run_id(record: dict) -> dict:
    """The run_id harness-run would give: package versions are not part of it (see records.run_id)."""
    settled = {"device_type": record["memory"]["device"], "precision": "fp32", "data_sha256": record.get("data_sha256")}
    record["run_id"] = records.run_id(_as_cfg(record), settled)
    return record


def _as_cfg(record):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {**record["config"], "status_for_id": record["status"], "test_for_id": record["primary_metric"]["test"]}
    )


def write_records(results_dir, recs) -> None:
    for record in recs:
        records.write_record(records.record_path(results_dir, record["run_id"]), record)


def standard_records(methods=ACCURACY) -> list[dict]:
    return [synthetic_record(m, seed, acc) for m in methods for seed, acc in enumerate(ACCURACY[m])]


@pytest.fixture
def cells():
    frame = table.records_frame(standard_records())
    return summary.summarize(summary.quality_rows(frame, {}), "full").set_index("method")


# --- statistics against hand computations and scipy --------------------------------------------------------


def test_seed_summary_matches_a_hand_computation():
    result = stats.summarize_seeds([0.80, 0.86, 0.83])
    # mean 0.83; deviations -0.03, 0.03, 0 -> variance 0.0018/2 = 0.0009, std 0.03; t(0.975, 2) = 4.302653
    assert result.mean == pytest.approx(0.83)
    assert result.std == pytest.approx(0.03)
    assert result.n == 3
    assert result.ci_low == pytest.approx(0.83 - 4.302653 * 0.03 / math.sqrt(3), abs=1e-6)
    assert result.ci_high == pytest.approx(0.83 + 0.0745241, abs=1e-6)


def test_one_seed_has_a_mean_but_no_spread_and_missing_values_are_dropped():
    result = stats.summarize_seeds([0.7, None, float("nan")])
    assert (result.mean, result.n) == (0.7, 1)
    assert math.isnan(result.std) and math.isnan(result.ci_low) and math.isnan(result.ci_high)
    assert stats.summarize_seeds([]).n == 0


def test_paired_comparison_agrees_with_scipy_and_pairs_by_seed():
    method = {0: 0.88, 1: 0.91, 2: 0.91, 7: 0.5}  # seed 7 has no reference run: left out
    reference = {0: 0.90, 1: 0.92, 2: 0.94}
    result = stats.compare_paired(method, reference)
    assert result.n_pairs == 3
    assert result.delta == pytest.approx((-0.02 - 0.01 - 0.03) / 3)
    assert result.p_ttest == pytest.approx(scipy_stats.ttest_rel([0.88, 0.91, 0.91], [0.90, 0.92, 0.94]).pvalue)
    assert math.isnan(result.p_wilcoxon)  # below six pairs


def test_wilcoxon_is_reported_from_six_pairs_and_equals_scipy():
    a = {s: 0.8 + 0.01 * s for s in range(6)}
    b = {s: 0.79 + 0.013 * s + (0.002 if s % 2 else 0) for s in range(6)}
    result = stats.compare_paired(a, b)
    assert result.p_wilcoxon == pytest.approx(scipy_stats.wilcoxon(list(a.values()), list(b.values())).pvalue)
    assert result.p_ttest == pytest.approx(scipy_stats.ttest_rel(list(a.values()), list(b.values())).pvalue)


def test_identical_paired_runs_have_zero_delta_and_no_p_value():
    result = stats.compare_paired({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
    assert result.delta == 0 and math.isnan(result.p_ttest)


def test_pareto_front_by_hand():
    costs = [10, 20, 30, 30, 40, float("nan")]
    quality = [0.5, 0.7, 0.6, 0.7, 0.9, 1.0]
    # 0: cheapest; 1: better than 0; 2: dominated by 1; 3: ties 1 on quality at higher cost; 4: best; 5: no cost
    assert stats.pareto_front(costs, quality) == [True, True, False, False, True, False]
    # lower is better (a loss): the cheapest point with the lowest loss dominates all the others
    assert stats.pareto_front([10, 20, 30], [0.3, 0.2, 0.4], higher_is_better=False) == [True, True, False]
    assert stats.pareto_front([10, 10], [0.5, 0.5]) == [True, True]  # identical points do not dominate each other


# --- the summary table ------------------------------------------------------------------------------------


def test_summary_numbers_match_hand_computation(cells):
    ia3 = cells.loc["ia3"]
    assert ia3["mean"] == pytest.approx(0.83) and ia3["std"] == pytest.approx(0.03) and ia3["n"] == 3
    assert ia3["ci_low"] == pytest.approx(0.83 - 0.0745241, abs=1e-6)
    assert ia3["delta"] == pytest.approx(((0.80 - 0.90) + (0.86 - 0.92) + (0.83 - 0.94)) / 3)
    assert ia3["p_ttest"] == pytest.approx(scipy_stats.ttest_rel(ACCURACY["ia3"], ACCURACY["full"]).pvalue)
    assert cells.loc["full", "is_reference"] and math.isnan(cells.loc["full", "delta"])
    assert cells.loc["lora", "method_pct"] == pytest.approx(100 * 40_000 / 22_700_000)
    assert cells.loc["lora", "trainable"] == 40_000 + HEAD


def test_pareto_membership_in_the_summary(cells):
    # params: prompt 20K but 0.60; ia3 17K 0.83; lora 40K 0.90; full 22M 0.92 -> prompt is dominated by ia3
    assert dict(cells["pareto_params"]) == {"full": True, "lora": True, "ia3": True, "prompt": False}
    # memory: prompt 500 MiB (cheapest), lora 600, ia3 620 (dominated by lora), full 900
    assert dict(cells["pareto_memory"]) == {"full": True, "lora": True, "ia3": False, "prompt": True}


def test_best_value_per_column_is_bold(cells):
    (display,) = render.display_tables(cells.reset_index(), "full")
    bold = display.bold.set_index(display.cells["Method"])
    assert bold.loc["full", "accuracy (test)"] and bold["accuracy (test)"].sum() == 1
    assert bold.loc["ia3", "Method params"] and bold["Method params"].sum() == 1
    assert bold.loc["prompt", "Train peak RSS (MiB)"] and bold["Train peak RSS (MiB)"].sum() == 1
    assert bold["Train (s)"].all()  # every method took 100.0 s: all tied, all bold
    row = display.cells.set_index("Method").loc["ia3"]
    assert row["accuracy (test)"] == "0.830 ± 0.030"
    assert row["95% CI"] == "[0.755, 0.905]"
    assert row["Δ vs full"] == "-0.090"
    assert row["Pareto"] == "params"


# Per method: weights (MiB), train seconds, tokens per second; each cost column has another best method.
COSTS = {
    "full": (88, 300.0, 900.0),
    "lora": (87, 120.4, 1500.0),
    "ia3": (90, 120.36, 1400.0),
    "prompt": (89, 150.0, 1450.0),
}


def _costly_records() -> list[dict]:
    recs = []
    for record in standard_records():
        weights, seconds, speed = COSTS[record["method"]]
        record["memory"] = {**record["memory"], "weights_bytes": weights * 2**20}
        record["time"] = {**record["time"], "train_seconds": seconds, "train_tokens_per_second": speed}
        recs.append(record)
    return recs


def test_each_registry_column_reads_and_bolds_as_declared():
    """Hand-written expectations per column: a wrong direction bolds another method, a wrong format another text."""
    cells = summary.summarize(summary.quality_rows(table.records_frame(_costly_records()), {}), "full")
    (display,) = render.display_tables(cells, "full")
    assert list(display.cells.columns) == [
        "Method",
        "accuracy (test)",
        "n",
        "95% CI",
        "Method params",
        "Method %",
        "Trainable",
        "Weights (MiB)",
        "Train peak RSS (MiB)",
        "Above load (MiB)",
        "Train (s)",
        "Tokens/s",
        "Δ vs full",
        "p (t)",
        "p (W)",
        "Pareto",
    ]
    assert display.align == "l" + "r" * 15
    bold = display.bold.set_index(display.cells["Method"])
    best = {header: sorted(bold.index[bold[header]]) for header in bold.columns if bold[header].any()}
    assert best == {
        "accuracy (test)": ["full"],  # higher is better for accuracy
        "Method params": ["ia3"],
        "Method %": ["ia3"],
        "Trainable": ["ia3"],  # fewest
        "Weights (MiB)": ["lora"],
        "Train peak RSS (MiB)": ["prompt"],
        "Above load (MiB)": ["prompt"],  # least
        "Train (s)": ["ia3", "lora"],  # shortest: 120.36 and 120.4 both read 120.4, a tie
        "Tokens/s": ["lora"],  # fastest
    }
    assert display.cells.set_index("Method").loc["lora"].to_dict() == {
        "accuracy (test)": "0.900 ± 0.017",
        "n": "3",
        "95% CI": "[0.857, 0.943]",
        "Method params": "40.00K",
        "Method %": "0.176",
        "Trainable": "40.77K",
        "Weights (MiB)": "87",
        "Train peak RSS (MiB)": "1,624",
        "Above load (MiB)": "600",
        "Train (s)": "120.4",
        "Tokens/s": "1,500",
        "Δ vs full": "-0.020",
        "p (t)": "0.074",
        "p (W)": "–",
        "Pareto": "params, memory",
    }


def test_summary_columns_are_the_registry_in_its_order():
    cells = summary.summarize(summary.quality_rows(table.records_frame(standard_records()), {}), "full")
    assert set(cells.columns) == {*columns.keys(), "budget_rank"}  # the order is pinned by the pre-change report test
    assert len(set(columns.keys())) == len(columns.COLUMNS)
    assert all(c.source is not None for c in columns.COLUMNS if c.seeds)


def test_a_registry_entry_adds_its_column_to_markdown_and_csv(tmp_path, monkeypatch):
    entry = columns.Column("eval_s", "eval_s", columns.mean, "Eval (s)", columns.number, decimals=1, better="lower")
    monkeypatch.setattr(columns, "COLUMNS", (*columns.COLUMNS, entry))
    results = tmp_path / "results"
    write_records(results, standard_records({"full": None, "lora": None}))
    assert cli.main([str(results), "--formats", "md,csv"]) == 0
    markdown = (results / "report" / "report.md").read_text()
    assert "| Pareto | Eval (s) |" in markdown and "| params, memory | **5.0** |" in markdown  # a tie: both bold
    written = pd.read_csv(results / "report" / "summary.csv")
    assert list(written.columns)[-1] == "eval_s" and list(written["eval_s"]) == [5.0, 5.0]


def test_the_notes_and_readme_state_the_statistics_constants():
    (display,) = render.display_tables(
        summary.summarize(summary.quality_rows(table.records_frame(standard_records()), {}), "full"), "full"
    )
    assert f"reported from {stats.MIN_WILCOXON_PAIRS} non-zero paired differences" in " ".join(display.notes)
    assert f"t-based {stats.CONFIDENCE:.0%} CI" in display.caption
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"`MIN_WILCOXON_PAIRS` = {stats.MIN_WILCOXON_PAIRS}" in readme


def test_lower_is_better_metrics_bold_the_minimum_and_flip_the_front():
    recs = [
        synthetic_record(m, s, 1.0 - a, higher_is_better=False)
        for m in ("full", "ia3")
        for s, a in enumerate(ACCURACY[m])
    ]
    cells = summary.summarize(summary.quality_rows(table.records_frame(recs), {}), "full")
    (display,) = render.display_tables(cells, "full")
    bold = display.bold.set_index(display.cells["Method"])
    assert bold.loc["full", "loss (test)"] and not bold.loc["ia3", "loss (test)"]
    assert cells.set_index("method")["pareto_params"].all()


def test_a_grid_over_rank_gives_one_labelled_row_per_rank():
    recs = [synthetic_record("lora", s, 0.8 + 0.01 * r, config_extra={"r": r}) for r in (4, 8) for s in range(2)]
    frame = table.records_frame(recs)
    assert sorted(set(frame["label"])) == ["lora (r=4)", "lora (r=8)"]
    cells = summary.summarize(summary.quality_rows(frame, {}), "full")
    assert dict(zip(cells["label"], cells["mean"], strict=True)) == pytest.approx(
        {"lora (r=4)": 0.84, "lora (r=8)": 0.88}
    )


def test_tuned_cells_report_their_current_finals_only(tmp_path):
    tuning = {"study": "minilm/toy_sentiment/lora/tiny#abc", "trial": 1, "params": {"lr": 0.002, "r": 8}}
    trials = [
        synthetic_record("lora", 0, None, role="trial", tuning={**tuning, "trial": t}, validation=0.9) for t in range(2)
    ]
    finals = [synthetic_record("lora", s, a, role="final", tuning=tuning) for s, a in enumerate([0.90, 0.92])]
    stale = synthetic_record("lora", 0, 0.10, role="final", tuning={**tuning, "trial": 0})
    untuned = [synthetic_record("lora", s, 0.5) for s in range(2)]
    study = {
        "study": tuning["study"],
        "cell": {"task": "toy_sentiment", "budget": "tiny", "method": "lora"},
        "finals": [{"run_id": f["run_id"]} for f in finals],
        "best": {"trial": 1, "value": 0.9, "params": tuning["params"]},
        "search": {
            "space": {
                "lr": {"name": "FloatDistribution", "attributes": {"low": 1e-4, "high": 1e-2, "log": True}},
                "r": {"name": "CategoricalDistribution", "attributes": {"choices": [4, 8, 16]}},
            }
        },
        "states": {"complete": 2},
        "trials": 2,
        "tuning_cost": {"train_seconds": 200.0},
    }
    frame = table.records_frame([*trials, *finals, stale, *untuned])
    chosen = summary.quality_rows(frame, {study["study"]: study})
    assert sorted(chosen["run_id"]) == sorted(f["run_id"] for f in finals)
    (row,) = summary.summarize(chosen, "full").to_dict("records")
    assert row["mean"] == pytest.approx(0.91) and row["role"] == "final"
    tuning_table = summary.tuning_rows(frame, {study["study"]: study})
    assert tuning_table["best_params"].iloc[0] == "lr=0.002, r=8"
    assert tuning_table["on_edge"].iloc[0] == ""


def test_best_values_on_the_edge_of_their_range_are_flagged():
    space = {
        "lr": {"attributes": {"low": 1e-5, "high": 1e-2, "log": True}},
        "r": {"attributes": {"choices": [4, 8, 16, 32]}},
        "dropout": {"attributes": {"low": 0.0, "high": 0.5, "log": False}},
    }
    assert summary.edge_params({"lr": 9.5e-3, "r": 8, "dropout": 0.25}, space) == ["lr"]
    assert summary.edge_params({"lr": 1e-4, "r": 4, "dropout": 0.49}, space) == ["r", "dropout"]
    assert summary.edge_params({"lr": 3e-4, "r": 16, "dropout": 0.1}, space) == []


# --- the command: every format, failures, bad input ----------------------------------------------------------


class _HTMLCounter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_every_format_is_written_and_parses(tmp_path):
    results = tmp_path / "results"
    write_records(results, standard_records())
    assert cli.main([str(results)]) == 0
    out = results / "report"
    written = pd.read_csv(out / "summary.csv").set_index("method")
    assert written.loc["ia3", "mean"] == pytest.approx(0.83) and written.loc["ia3", "n"] == 3
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == 12 and len(pd.read_csv(out / "index.csv")) == 12
    markdown = (out / "report.md").read_text()
    assert "| ia3 | 0.830 ± 0.030 | 3 | [0.755, 0.905] |" in markdown
    assert "**0.920 ± 0.020**" in markdown
    for name in ("quality_vs_params", "quality_vs_memory", "quality_vs_budget", "training_curves"):
        for extension in ("png", "pdf"):
            assert (out / "plots" / f"toy_sentiment_{name}.{extension}").stat().st_size > 1000
        assert f"(plots/toy_sentiment_{name}.png)" in markdown
    page = _HTMLCounter()
    page.feed((out / "report.html").read_text())
    assert page.tags.get("table", 0) >= 1 and len(page.images) == 4
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    _check_latex((out / "summary.tex").read_text(), columns=len(pd.read_csv(out / "summary.csv")))


def test_the_report_is_a_pure_function_of_the_records(tmp_path):
    results = tmp_path / "results"
    write_records(results, standard_records())
    outputs = []
    for attempt in ("a", "b"):
        assert cli.main([str(results), "--out", str(tmp_path / attempt)]) == 0
        outputs.append({p.relative_to(tmp_path / attempt): p.read_bytes() for p in (tmp_path / attempt).rglob("*.*")})
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) > 10
    assert [p for p in outputs[0] if outputs[0][p] != outputs[1][p]] == []


def _check_latex(latex: str, columns: int) -> None:
    assert latex.count(r"\begin{table}") == latex.count(r"\end{table}") == 1
    assert all(rule in latex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    body = latex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    header = latex.split(r"\toprule")[1].split(r"\midrule")[0].strip()
    assert len(body) == columns
    assert {line.count(" & ") for line in body} == {header.count(" & ")}
    assert r"\textbf{0.920 $\pm$ 0.020}" in latex and "toy\\_sentiment" in latex
    assert latex.count("{") == latex.count("}")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_table_compiles(tmp_path):
    results = tmp_path / "results"
    write_records(results, standard_records())
    assert cli.main([str(results), "--formats", "tex"]) == 0
    document = tmp_path / "doc.tex"
    document.write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\begin{document}"
        f"\\input{{{results / 'report' / 'summary.tex'}}}\\end{{document}}"
    )
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]


def test_failed_and_pruned_runs_are_listed_and_kept_out_of_the_quality_table(tmp_path):
    results = tmp_path / "results"
    recs = standard_records({"full": None, "lora": None})
    broken = synthetic_record(
        "ia3", 0, None, status="failed", error="NonFiniteLossError: loss is nan at step 3", error_kind="non_finite_loss"
    )
    pruned = synthetic_record("prompt", 0, None, status="pruned", pruned_at_step=50)
    write_records(results, [*recs, broken, pruned])
    (results / "runs" / ".half-written.tmp").write_text("{")
    (results / "runs" / "garbage.json").write_text("{not json")
    assert cli.main([str(results), "--formats", "md,csv"]) == 0
    out = results / "report"
    assert set(pd.read_csv(out / "summary.csv")["method"]) == {"full", "lora"}
    unfinished = pd.read_csv(out / "failed_and_pruned.csv")
    assert list(unfinished["status"]) == ["failed", "pruned"]
    assert unfinished["error_kind"].iloc[0] == "non_finite_loss" and unfinished["pruned_at_step"].iloc[1] == 50
    markdown = (out / "report.md").read_text()
    assert "NonFiniteLossError: loss is nan at step 3" in markdown
    assert "6 success, 1 pruned, 1 failed" in markdown
    assert not (out / "report.html").exists()


def test_several_budgets_become_rows_with_bold_per_budget(tmp_path):
    recs = standard_records() + [
        synthetic_record(m, s, a + 0.02, budget="small") for m in ("full", "ia3") for s, a in enumerate(ACCURACY[m])
    ]
    cells = summary.summarize(summary.quality_rows(table.records_frame(recs), {}), "full")
    assert list(cells["budget"]) == ["tiny"] * 4 + ["small"] * 2  # ordered by training tokens, not by name
    (display,) = render.display_tables(cells, "full")
    assert "Budget" in display.cells.columns
    bold_quality = display.cells[display.bold["accuracy (test)"]]
    assert list(zip(bold_quality["Budget"], bold_quality["Method"], strict=True)) == [
        ("tiny", "full"),
        ("small", "full"),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--formats", "md,xls"], "error: --formats: unknown xls; allowed: md, csv, tex, html"),
        (["--reference", "nosuch"], "error: --reference: no records of method 'nosuch'; methods present: full, ia3"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, capsys, argv, message):
    results = tmp_path / "results"
    write_records(results, standard_records({"full": None, "ia3": None}))
    assert cli.main([str(results), *argv]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (results / "report").exists()


def test_a_folder_without_records_is_a_one_line_error(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: RESULTS_DIR: {tmp_path / 'nowhere'} is not a folder"
    assert cli.main([str(tmp_path)]) == 2
    assert "no readable run records" in capsys.readouterr().err


def test_without_the_reference_method_there_is_no_comparison_column(tmp_path):
    results = tmp_path / "results"
    write_records(results, standard_records({"lora": None, "ia3": None}))
    assert cli.main([str(results), "--formats", "md"]) == 0
    markdown = (results / "report" / "report.md").read_text()
    assert "Δ vs" not in markdown and "No full runs in this table" in markdown
    assert cli.main([str(results), "--formats", "md", "--reference", "lora"]) == 0
    assert "| ia3 | 0.830 ± 0.030 | 3 | [0.755, 0.905] |" in (results / "report" / "report.md").read_text()
    assert "Δ vs lora" in (results / "report" / "report.md").read_text()


def test_the_console_script_is_installed_and_reports(tmp_path):
    results = tmp_path / "results"
    write_records(results, standard_records({"full": None, "lora": None}))
    script = Path(sys.executable).parent / "harness-report"
    done = subprocess.run(
        [str(script), str(results), "--out", str(tmp_path / "paper"), "--formats", "csv"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'paper' / 'summary.csv'}" in done.stdout.splitlines()
    assert "| Method | accuracy (test) | n | 95% CI |" in done.stdout  # the main table, printed
    assert len(pd.read_csv(tmp_path / "paper" / "summary.csv")) == 2
    assert not (tmp_path / "paper" / "report.md").exists()


def test_several_objectives_on_one_task_are_labelled_and_compared_within_their_objective():
    recs = []
    for objective, shift in (("sft", 0.0), ("dpo", 0.05)):
        for method in ("full", "lora"):
            for seed, accuracy in enumerate(ACCURACY[method]):
                record = synthetic_record(method, seed, accuracy + shift, objective=objective)
                record["config"]["objective"] = {"name": objective}
                recs.append(with_run_id(record))
    frame = table.records_frame(recs)
    assert sorted(set(frame["label"])) == ["dpo+full", "dpo+lora", "sft+full", "sft+lora"]
    cells = summary.summarize(summary.quality_rows(frame, {}), "full").set_index("label")
    # each lora is compared with the full run of its own objective: the same shift cancels
    assert cells.loc["dpo+lora", "delta"] == pytest.approx(cells.loc["sft+lora", "delta"])
    assert cells.loc["dpo+lora", "delta"] == pytest.approx(sum(ACCURACY["lora"]) / 3 - sum(ACCURACY["full"]) / 3)


# --- what a number may be compared with: statistics edge cases, settings, seeds -------------------------------


def test_zero_differences_do_not_count_toward_the_wilcoxon_pairs():
    """Seven pairs, two of them ties: scipy drops the ties, so five non-zero differences remain, too few."""
    reference = {s: 0.80 for s in range(7)}
    method = {0: 0.80, 1: 0.80, 2: 0.81, 3: 0.83, 4: 0.82, 5: 0.84, 6: 0.85}
    assert math.isnan(stats.compare_paired(method, reference).p_wilcoxon)
    method[1] = 0.86  # six non-zero differences: reported, and equal to scipy's
    result = stats.compare_paired(method, reference)
    assert result.p_wilcoxon == pytest.approx(
        scipy_stats.wilcoxon(list(method.values()), list(reference.values())).pvalue
    )


def test_a_nan_seed_is_left_out_of_the_pairs_and_named_in_a_note():
    result = stats.compare_paired({0: 0.9, 1: float("nan"), 2: 0.8}, {0: 0.85, 1: 0.9, 2: 0.8})
    assert result.n_pairs == 2 and result.delta == pytest.approx(0.025)
    recs = standard_records({"full": None, "lora": None})
    recs[4]["primary_metric"]["test"] = float("nan")  # lora, seed 1
    cells = summary.summarize(summary.quality_rows(table.records_frame(recs), {}), "full")
    lora = cells.set_index("method").loc["lora"]
    assert lora["n"] == 2 and lora["mean"] == pytest.approx((0.88 + 0.91) / 2)
    assert lora["delta"] == pytest.approx(((0.88 - 0.90) + (0.91 - 0.94)) / 2)
    (display,) = render.display_tables(cells, "full")
    assert "lora: left out seed 1 (no finite test score)." in display.notes


def test_one_table_never_mixes_test_and_validation_scores():
    recs = standard_records({"full": None, "lora": None})
    recs[3]["primary_metric"]["test"] = None  # lora seed 0 was scored on validation only
    chosen = summary.quality_rows(table.records_frame(recs), {})
    assert set(chosen["split"]) == {"test"}
    cells = summary.summarize(chosen, "full").set_index("method")
    assert cells.loc["lora", "n"] == 2 and cells.loc["lora", "mean"] == pytest.approx(0.91)
    assert cells.loc["lora", "left_out"] == "seed 0 (no finite test score)"


def _on_gpu(record: dict, gpu: str = "NVIDIA H200") -> dict:
    record = {
        **record,
        "memory": {
            **record["memory"],
            "device": "cuda",
            "gpu": gpu,
            "source": "cuda_max_memory_allocated",
            "train_peak_bytes": 3 * 2**30,
        },
    }
    record["environment"] = {**record["environment"], "device": "cuda", "gpu": gpu}
    record["time"] = {**record["time"], "train_seconds": 5.0}
    return with_run_id(record)


def test_cpu_and_gpu_runs_are_never_averaged_ranked_or_put_on_one_front(tmp_path, capsys):
    cpu = standard_records({"full": None, "lora": None})
    gpu = [_on_gpu(r) for r in standard_records({"full": None, "lora": None})]
    for record in gpu:
        record["primary_metric"]["test"] -= 0.5  # a GPU run scoring far lower must not move the CPU figures
    cells = summary.summarize(summary.quality_rows(table.records_frame([*cpu, *gpu]), {}), "full")
    cpu_label, gpu_label = "CPU (Test CPU, 2 cores)", "GPU (NVIDIA H200)"
    assert sorted(cells["hardware"]) == [cpu_label, cpu_label, gpu_label, gpu_label]
    by = cells.set_index(["hardware", "method"])
    assert by.loc[(cpu_label, "lora"), "mean"] == pytest.approx(sum(ACCURACY["lora"]) / 3)
    assert by.loc[(cpu_label, "lora"), "n"] == 3
    assert by.loc[(gpu_label, "lora"), "delta"] == pytest.approx(by.loc[(cpu_label, "lora"), "delta"])
    tables = render.display_tables(cells, "full")
    assert [t.title for t in tables] == [f"toy_sentiment · {cpu_label}", f"toy_sentiment · {gpu_label}"]
    assert "Train peak RSS (MiB)" in tables[0].cells.columns and "Train peak CUDA (MiB)" in tables[1].cells.columns
    assert "CUDA allocator" in " ".join(tables[1].notes) and "VmHWM" in " ".join(tables[0].notes)
    results = tmp_path / "results"
    write_records(results, [*cpu, *gpu])
    assert cli.main([str(results), "--formats", "md"]) == 0
    assert f"warning: toy_sentiment: runs from 2 devices ({cpu_label} | {gpu_label})" in capsys.readouterr().err


def test_runs_of_different_library_versions_are_kept_apart_with_a_warning(tmp_path, capsys):
    """A study finished after a library upgrade: full and lora ran on peft 0.21, ia3 later on peft 0.22 (the
    same configs would share a run_id and be skipped, so the split falls between methods)."""
    old = standard_records({"full": None, "lora": None})
    new = []
    for record in standard_records({"ia3": None}):
        record["environment"] = {**record["environment"], "packages": {**PACKAGES, "peft": "0.22.0"}}
        new.append(record)
    results = tmp_path / "results"
    write_records(results, [*old, *new])
    assert cli.main([str(results), "--formats", "md,csv"]) == 0
    assert capsys.readouterr().err.count("warning: toy_sentiment: runs from 2 library versions") == 1
    written = pd.read_csv(results / "report" / "summary.csv").set_index("method")
    assert len(written) == 3 and set(written["n"]) == {3}
    assert "peft 0.22.0" in written.loc["ia3", "software"] and "peft 0.22.0" not in written.loc["full", "software"]
    assert written.loc["ia3", "delta"] != written.loc["ia3", "delta"]  # NaN: never paired with full of peft 0.21
    assert written.loc["lora", "delta"] == pytest.approx((-0.02 - 0.01 - 0.03) / 3)


def _tuned_records(tuning_seed: int, final_seeds: list[int]) -> tuple[list[dict], dict]:
    tuning = {"study": "minilm/toy_sentiment/lora/tiny#abc", "trial": 1, "params": {"lr": 0.002}}
    trials = [
        synthetic_record("lora", tuning_seed, None, role="trial", tuning={**tuning, "trial": t}) for t in range(2)
    ]
    finals = [synthetic_record("lora", s, 0.9, role="final", tuning=tuning) for s in final_seeds]
    study = {
        "study": tuning["study"],
        "cell": {"task": "toy_sentiment", "budget": "tiny", "method": "lora"},
        "tuning_seed": tuning_seed,
        "final_seeds": final_seeds,
        "finals": [{"run_id": f["run_id"]} for f in finals],
        "best": {"trial": 1, "value": 0.9, "params": tuning["params"]},
        "states": {"complete": 2},
        "trials": 2,
    }
    return [*trials, *finals], {study["study"]: study}


def test_the_report_says_which_seed_tuned_and_which_seeds_were_scored():
    recs, studies = _tuned_records(1000, [0, 1])
    frame = table.records_frame(recs)
    (display,) = render.display_tables(summary.summarize(summary.quality_rows(frame, studies), "full", frame), "full")
    assert any("Trials ran on seed 1000; finals were scored on seeds 0, 1." in note for note in display.notes)
    assert not any("also a tuning seed" in note for note in display.notes)
    recs, studies = _tuned_records(0, [0, 1])  # set explicitly to a final seed: allowed, and said
    frame = table.records_frame(recs)
    (display,) = render.display_tables(summary.summarize(summary.quality_rows(frame, studies), "full", frame), "full")
    assert (
        "lora: final seed 0 is also a tuning seed (set explicitly), so that final repeats the winning trial's draw "
        "and carries the selection's optimism." in display.notes
    )
    assert summary.tuning_rows(frame, studies)["tuning_seed"].iloc[0] == 0


def test_the_params_front_uses_the_methods_own_count_so_a_head_probe_sits_at_zero(tmp_path):
    recs = standard_records({"full": None, "lora": None})
    for seed, accuracy in enumerate([0.7, 0.72, 0.71]):
        probe = synthetic_record("lora", seed, accuracy, config_extra={"r": 1})
        probe["method"] = probe["config"]["method"]["name"] = "head"
        probe["params"] = {**probe["params"], "method": 0, "trainable": HEAD, "method_percent": 0.0}
        recs.append(with_run_id(probe))
    cells = summary.summarize(summary.quality_rows(table.records_frame(recs), {}), "full").set_index("method")
    assert cells.loc["head", "method_params"] == 0 and cells.loc["head", "pareto_params"]
    results = tmp_path / "results"
    write_records(results, recs)
    assert cli.main([str(results), "--formats", "md"]) == 0  # a zero on the log axis is drawn (symlog)
    markdown = (results / "report" / "report.md").read_text()
    assert "Method params: parameters the method adds or unfreezes, the task head excluded" in markdown


def test_schema_1_figures_are_not_shown_under_schema_2_names_and_a_rerun_supersedes_them(tmp_path):
    """A schema-1 record measured one window with evaluation in it and counted the head as trainable: none of that
    is what 'Train peak' or 'Method params' now say. Rerun into the same folder, the new record (another run_id)
    replaces it instead of doubling n."""
    old = standard_records({"full": None, "lora": None})
    for record in old:
        record.update(
            schema_version=1,
            finished_at="2026-11-01T00:00:00+00:00",
            params={"trainable": 40_770, "total": 22_700_770, "trainable_percent": 0.18},
            memory={
                "source": "process_rss_sampled_20ms",
                "device": "cpu",
                "peak_bytes": 2**31,
                "peak_above_baseline_bytes": 2**29,
            },
        )
        record["primary_metric"]["test"] -= 0.3
    frame = table.records_frame(old)
    assert frame["train_peak_mib"].isna().all() and frame["method_params"].isna().all()
    cells = summary.summarize(summary.quality_rows(frame, {}), "full").set_index("method")
    assert cells["train_peak_mib"].isna().all() and not cells["pareto_memory"].any()
    assert set(cells["memory_source"]) == {"none"}  # kept apart from schema-2 runs, which all have a source
    write_records(tmp_path / "old", old)
    assert cli.main([str(tmp_path / "old"), "--formats", "md"]) == 0  # the plots have no such figures to draw
    assert (tmp_path / "old" / "report" / "plots" / "toy_sentiment_quality_vs_params.png").is_file()
    new = [{**r, "finished_at": "2026-12-01T00:00:00+00:00"} for r in standard_records({"full": None, "lora": None})]
    earlier = [
        {
            **r,
            "run_id": r["run_id"][::-1],
            "finished_at": "2026-11-20T00:00:00+00:00",
            "primary_metric": {**r["primary_metric"], "test": 0.1},
        }
        for r in new
    ]  # same experiment, older id
    current = summary.summarize(summary.quality_rows(table.records_frame([*old, *earlier, *new]), {}), "full")
    current = current[current["memory_source"] == "linux_vmhwm"].set_index("method")
    assert current.loc["lora", "n"] == 3 and current.loc["lora", "mean"] == pytest.approx(sum(ACCURACY["lora"]) / 3)


def test_a_gpu_final_neither_hides_cpu_runs_nor_enters_the_cpu_tables_plots(tmp_path, monkeypatch):
    """Plain CPU runs of lora stay in the CPU table when a tuned lora final exists only on GPU, and the CPU
    table's training curves are drawn from CPU runs alone."""
    cpu = standard_records({"full": None, "lora": None})
    tuning = {"study": "minilm/toy_sentiment/lora/tiny#gpu", "trial": 0, "params": {"lr": 0.002}}
    gpu_final = _on_gpu(synthetic_record("lora", 0, 0.5, role="final", tuning=tuning))
    chosen = summary.quality_rows(table.records_frame([*cpu, gpu_final]), {})
    cpu_lora = chosen[(chosen["method"] == "lora") & chosen["hardware"].str.startswith("CPU")]
    assert len(cpu_lora) == 3 and set(cpu_lora["role"]) == {"run"}
    gpu_full = [_on_gpu(r) for r in standard_records({"full": None})]  # the CPU full runs' cell, on a GPU
    drawn = []
    monkeypatch.setattr(plots, "training_curves", lambda curves, *a, **k: drawn.append(curves) or plots.plt.figure())
    results = tmp_path / "results"
    write_records(results, [*cpu, gpu_final, *gpu_full])
    assert cli.main([str(results), "--formats", "md"]) == 0
    assert len(drawn) == 2
    cpu_ids, gpu_ids = {r["run_id"] for r in cpu}, {r["run_id"] for r in [gpu_final, *gpu_full]}
    assert [set(d["run_id"]) for d in drawn] == [cpu_ids, gpu_ids]


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("folder", ["glue_cpu", "example"])
def test_a_committed_report_from_before_the_change_is_regenerated_byte_for_byte(tmp_path, folder):
    """The committed reports were written by the report code before the column registry and the task move;
    the current code must read their records and write the same tables (plots are pixels, left out)."""
    committed = REPO_ROOT / "results" / folder
    if not (committed / "report" / "summary.csv").is_file():
        pytest.skip(f"no committed report in results/{folder}")
    copy = tmp_path / folder
    shutil.copytree(committed / "runs", copy / "runs")
    if (committed / "studies").is_dir():
        shutil.copytree(committed / "studies", copy / "studies")
    assert cli.main([str(copy)]) == 0
    for name in ("summary.csv", "tuning.csv", "failed_and_pruned.csv", "report.md", "summary.tex"):
        assert (copy / "report" / name).read_text() == (committed / "report" / name).read_text(), name


# --- strings from records are data, never markup; bad files are named and left out -----------------------

SCRIPT = "<script>alert(1)</script>"
IMAGE = '"><img src=x onerror=alert(2)>'
FRAME = "<iframe src=javascript:alert(3)></iframe>"
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "ul", "li", "img"}
TABLE_TAGS = {"table", "caption", "thead", "tbody", "tr", "th", "td"}


class _HTMLContent(HTMLParser):
    """Tags, attributes and text of a page as a browser parses it."""

    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes += [(tag, name) for name, _ in attrs]

    def handle_data(self, data):
        self.text.append(data)


def _with_markup(record: dict, method: str) -> dict:
    """A record whose method, task, model and CPU names are markup (a hostile or careless config)."""
    for key, value in (("method", method), ("task", IMAGE), ("model", FRAME)):
        record[key] = record["config"][key]["name"] = value
    record["environment"]["cpu"] = FRAME
    return with_run_id(record)


def test_strings_from_records_appear_escaped_in_html_and_inert_in_markdown(tmp_path):
    results = tmp_path / "results"
    recs = [_with_markup(synthetic_record("full", s, a), "full") for s, a in enumerate(ACCURACY["full"])]
    recs += [_with_markup(synthetic_record("lora", s, a), SCRIPT) for s, a in enumerate(ACCURACY["lora"])]
    failed = synthetic_record("ia3", 0, None, status="failed", error=f"ValueError: {SCRIPT}", error_kind="exception")
    write_records(results, [*recs, _with_markup(failed, SCRIPT)])
    (results / "runs" / f"{IMAGE}.json").write_text("[]")  # a file name from outside: listed as skipped
    assert cli.main([str(results)]) == 0
    page = (results / "report" / "report.html").read_text()
    parsed = _HTMLContent()
    parsed.feed(page)
    assert parsed.tags <= PAGE_TAGS | TABLE_TAGS, parsed.tags - PAGE_TAGS - TABLE_TAGS
    assert {(tag, name) for tag, name in parsed.attributes if name.startswith("on") or name == "src"} == {
        ("img", "src")
    }
    text = "".join(parsed.text)
    for markup in (SCRIPT, IMAGE, FRAME):
        assert markup in text  # shown to the reader as the text it is
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page and "<iframe" not in page
    markdown = (results / "report" / "report.md").read_text()
    for tag in ("<script", "<img", "<iframe", "</script"):
        assert tag not in markdown
    assert (
        "| &lt;script>alert(1)&lt;/script> |" in markdown and f"ValueError: {render.markdown_text(SCRIPT)}" in markdown
    )


def test_markdown_text_escapes_what_could_open_html_only():
    assert render.markdown_text("<b>x</b> <!-- c --> <http://a> <0.001 a<b") == (
        "&lt;b>x&lt;/b> &lt;!-- c --> &lt;http://a> <0.001 a&lt;b"
    )


def test_latex_captions_escape_every_special_character():
    assert render._latex_text(r"a_b {x} $y$ 50% #1 & ~^\z") == (
        r"a\_b \{x\} \$y\$ 50\% \#1 \& \textasciitilde{}\textasciicircum{}\textbackslash{}z"
    )


def test_bad_record_and_study_files_are_named_skipped_and_listed(tmp_path, capsys):
    """Truncated, not an object, from a newer harness, missing fields: one warning each naming the file, the
    report built from the rest, and the files listed at its end. A dead writer's temporary file is removed."""
    results = tmp_path / "results"
    recs = standard_records({"full": None, "lora": None})
    write_records(results, recs)
    runs, studies = results / "runs", results / "studies"
    good = (runs / f"{recs[0]['run_id']}.json").read_text()
    (runs / "truncated.json").write_text(good[: len(good) // 2])
    (runs / "list.json").write_text("[1, 2]")
    (runs / "newer.json").write_text(json.dumps({**recs[0], "schema_version": records.SCHEMA_VERSION + 1}))
    (runs / "fields.json").write_text(json.dumps({k: v for k, v in recs[0].items() if k not in ("seed", "task")}))
    studies.mkdir()
    (studies / "torn.json").write_text('{"study": ')
    (studies / "nameless.json").write_text("{}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = runs / f".abc.{records._host_key()}-{dead.pid}.x1y2z3.tmp"
    leftover.write_text("{")
    assert cli.main([str(results), "--formats", "md,csv,html"]) == 0
    expected = {
        "runs/fields.json": "missing required fields: task, seed",
        "runs/list.json": "not a JSON object (a list)",
        "runs/newer.json": f"schema_version {records.SCHEMA_VERSION + 1} is newer than this harness's "
        f"{records.SCHEMA_VERSION} (upgrade the harness)",
        "runs/truncated.json": "truncated or invalid JSON (",
        "studies/nameless.json": "missing required fields: study",
        "studies/torn.json": "truncated or invalid JSON (Expecting value",
    }
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("warning: skipped ")]
    assert len(warnings) == len(expected)
    for name, problem in expected.items():
        (line,) = [w for w in warnings if w.startswith(f"warning: skipped {results / name}: ")]
        assert line.split(": ", 2)[2].startswith(problem), line
    assert f"note: removed {leftover}, a temporary file its writer left behind" in err and not leftover.exists()
    assert set(pd.read_csv(results / "report" / "summary.csv")["method"]) == {"full", "lora"}
    markdown = (results / "report" / "report.md").read_text()
    assert "From 6 run records (6 success); 6 files skipped (listed at the end)." in markdown
    listed = markdown.split("## Skipped files")[1].strip().splitlines()[2:]
    assert [line.split(":")[0] for line in listed] == [f"- {name}" for name in sorted(expected)]
    assert "<h2>Skipped files</h2>" in (results / "report" / "report.html").read_text()
