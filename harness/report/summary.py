"""From the index of records to the numbers a paper reports: one row per cell, with statistics.

Which records count: a tuned cell is reported through its finals (the best
trial's configuration re-run per seed and scored on the test split), and only
the finals its study summary lists, so finals left behind by an earlier,
shorter study are not mixed in. A method with no tuned cell is reported
through its plain runs. Trials never enter the quality table: their
validation score chose them, so it is optimistically biased.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness import records
from harness.report import columns, stats
from harness.report.table import GROUP_AXES, SETTING_AXES

# One display table per task and setting (hardware, library versions) and metric: a column never holds two
# quantities, and runs from different settings are never averaged, paired or ranked together.
DISPLAY = ["task", *SETTING_AXES, "metric"]
# Within one block every row is compared: bolding and Pareto fronts.
BLOCK = [*DISPLAY, "budget"]
CELL = [*GROUP_AXES, *SETTING_AXES, "label", "cell"]
TUNED_GROUP = [*GROUP_AXES, *SETTING_AXES]
EDGE_FRACTION = 0.05  # a best value within 5% of a range's end (log scale where the range is) sits on its edge


def load_study_summaries(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Each tuned cell's summary (``studies/*.json``, written by the sweeper), by study name."""
    return scan_study_summaries(results_dir)[0]


def scan_study_summaries(results_dir: str | Path) -> tuple[dict[str, dict[str, Any]], list[records.RecordFile]]:
    """The usable study summaries by study name, and the files skipped (unreadable, not an object, no study)."""
    folder = Path(results_dir) / "studies"
    found = [records.inspect_json(p, ("study",)) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return {f.record["study"]: f.record for f in found if f.record is not None}, [f for f in found if f.problem]


def quality_rows(frame: pd.DataFrame, studies: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Successful records that measure a cell's quality: current finals, else plain runs; one split per table.

    A table reports the test split when any of its runs was scored on it,
    else validation; a run without a score on that split is left out with a
    note (``left_out``) rather than reported on another split.
    """
    ok = frame[frame["status"] == "success"]
    finals = ok[ok["role"] == "final"]
    current = {f["run_id"] for s in studies.values() for f in s.get("finals", [])}
    listed = finals["study"].isin(studies.keys())
    finals = finals[~listed | finals["run_id"].isin(current)]
    # A tuned final supersedes plain runs of its group only on the same hardware and software.
    tuned_groups = set(map(tuple, finals[TUNED_GROUP].itertuples(index=False)))
    runs = ok[ok["role"] == "run"]
    runs = runs[[tuple(r) not in tuned_groups for r in runs[TUNED_GROUP].itertuples(index=False)]]
    chosen = _newest_per_seed(pd.concat([finals, runs]))
    if chosen.empty:
        return chosen.assign(split=pd.Series(dtype=str), quality=pd.Series(dtype=float), left_out=pd.Series(dtype=str))
    has_test = chosen.groupby(DISPLAY, dropna=False)["test"].transform(lambda v: v.notna().any())
    split = has_test.map({True: "test", False: "validation"})
    quality = chosen["test"].where(has_test, chosen["validation"])
    left_out = [_left_out(q, s) for q, s in zip(quality, split, strict=True)]
    return chosen.assign(split=split, quality=quality, left_out=left_out)


def _newest_per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """One record per cell and seed: a rerun of the same experiment (another run_id after a schema or identity
    change) supersedes the older record instead of doubling n."""
    if rows.empty:
        return rows
    return rows.sort_values("finished_at", na_position="first").drop_duplicates([*CELL, "seed"], keep="last")


def _left_out(quality: Any, split: str) -> str | None:
    """Why a run's score cannot enter its cell's statistics (None when it can): missing, NaN or infinite."""
    try:
        finite = quality is not None and math.isfinite(float(quality))
    except (TypeError, ValueError):
        finite = False
    return None if finite else f"no finite {split} score"


def summarize(chosen: pd.DataFrame, reference: str, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell: mean, std, n and 95% CI over seeds, costs, paired test against the reference.

    ``frame`` (every record) supplies the seeds the tuned cells' trials ran on, for the report's note. The columns
    are columns.registry's (COLUMNS and the benchmark scores present), in its order, plus ``budget_rank`` (the sort order of budgets, not written).
    """
    trial_seeds = _trial_seeds(frame)
    rows = [_cell_row(cell, group, trial_seeds) for cell, group in chosen.groupby(CELL, dropna=False, sort=False)]
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    summary = _add_comparisons(summary, chosen, reference)
    summary = _add_pareto(summary)
    budget_order = summary.groupby("budget")["train_tokens"].mean().rank(method="first")
    summary["budget_rank"] = summary["budget"].map(budget_order)
    summary = summary.sort_values(
        [*DISPLAY, "budget_rank", "method_params", "label"], ascending=[True] * len(DISPLAY) + [True, False, True]
    )
    return summary[[*columns.keys(chosen), "budget_rank"]]


def _trial_seeds(frame: pd.DataFrame | None) -> dict[str, list[int]]:
    if frame is None or frame.empty:
        return {}
    trials = frame[(frame["role"] == "trial") & frame["study"].notna()]
    return {study: sorted({int(s) for s in group["seed"]}) for study, group in trials.groupby("study")}


def _cell_row(cell: tuple, group: pd.DataFrame, trial_seeds: dict[str, list[int]]) -> dict[str, Any]:
    """The cell's keys, each registry column its seeds aggregate, and the statistics over its counted scores."""
    counted = group[group["left_out"].isna()]
    seeds = stats.summarize_seeds(counted["quality"].tolist())
    study = group["study"].iloc[0]
    return _comparable_forgetting(
        {
            **dict(zip(CELL, cell, strict=True)),
            **{column.key: column.seeds(group[column.source]) for column in columns.registry(group) if column.seeds},
            "mean": seeds.mean,
            "std": seeds.std,
            "n": seeds.n,
            "ci_low": seeds.ci_low,
            "ci_high": seeds.ci_high,
            "seeds": ",".join(str(s) for s in sorted(counted["seed"])),
            "left_out": "; ".join(
                f"seed {r.seed} ({r.left_out})" for r in group.itertuples() if isinstance(r.left_out, str)
            )
            or None,
            "tuning_seeds": ",".join(map(str, trial_seeds.get(study, []))) if isinstance(study, str) else None,
        }
    )


FORGETTING_FIGURES = ("forgetting", "ce_before", "ce_after")


def _comparable_forgetting(row: dict[str, Any]) -> dict[str, Any]:
    """A cell whose seeds scored different texts (or cuts of one) has no forgetting figure: their mean is none."""
    if row.get("forgetting_text") == "mixed":
        row.update(dict.fromkeys(FORGETTING_FIGURES, math.nan))
    for key in [k for k in row if k.endswith("|setting") and row[k] == "mixed"]:
        benchmark = key.removesuffix("|setting")  # a benchmark score whose seeds were scored under other settings
        row[benchmark] = row[f"{benchmark}|std"] = math.nan
    return row


# A reference cell is comparable when it matches on all of these (and differs in method).
COMPARABLE = ["model", "task", "budget", "objective", *SETTING_AXES, "metric", "split"]


def _add_comparisons(summary: pd.DataFrame, chosen: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Δ and p of each cell against the reference method's cell in the same model, task, budget and setting."""
    counted = chosen[chosen["left_out"].isna()]
    per_seed = {cell: dict(zip(g["seed"], g["quality"], strict=True)) for cell, g in counted.groupby(CELL, sort=False)}
    results = []
    for row in summary.itertuples(index=False):
        match = pd.Series(True, index=summary.index)
        for key in COMPARABLE:
            match &= summary[key] == getattr(row, key)
        references = summary[match & (summary["method"] == reference)]
        if row.method == reference or len(references) != 1:
            results.append(stats.PairedComparison(math.nan, 0, math.nan, math.nan))
            continue
        ref_cell = tuple(references[CELL].iloc[0])
        mine = per_seed.get(tuple(getattr(row, c) for c in CELL), {})
        results.append(stats.compare_paired(mine, per_seed.get(ref_cell, {})))
    return summary.assign(
        delta=[r.delta for r in results],
        n_pairs=[r.n_pairs for r in results],
        p_ttest=[r.p_ttest for r in results],
        p_wilcoxon=[r.p_wilcoxon for r in results],
        is_reference=summary["method"] == reference,
    )


def _add_pareto(summary: pd.DataFrame) -> pd.DataFrame:
    """Pareto membership within each block: fewest method parameters / least training memory / least forgetting
    for the quality (a block without forgetting figures has no forgetting front)."""
    summary = summary.copy()
    summary["pareto_params"] = False
    summary["pareto_memory"] = False
    summary["pareto_forgetting"] = False
    fronts = (
        ("method_params", "pareto_params"),
        ("train_peak_mib", "pareto_memory"),
        ("forgetting", "pareto_forgetting"),
    )
    for _, block in summary.groupby(BLOCK, sort=False):
        higher = bool(block["higher_is_better"].iloc[0])
        for cost, column in fronts:
            if column == "pareto_forgetting" and block["forgetting_text"].nunique() > 1:
                continue  # figures on different texts are not one axis
            front = stats.pareto_front(block[cost].tolist(), block["mean"].tolist(), higher)
            summary.loc[block.index, column] = front
    return summary


def unfinished_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Failed and pruned records, with their errors and the compute they spent."""
    columns = ["task", "budget", "label", "seed", "role", "trial", "status", "error_kind", "pruned_at_step", "error"]
    rows = frame[frame["status"].isin(["failed", "pruned"])]
    return rows.reindex(columns=columns).sort_values(["status", "task", "label", "trial", "seed"], na_position="last")


def tuning_rows(frame: pd.DataFrame, studies: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Per tuned cell: its trials, best value and parameters, cost, and best values on a range's edge."""
    labels = frame.dropna(subset=["study"]).drop_duplicates("study").set_index("study")["label"]
    rows = []
    for name, summary in studies.items():
        best, cost, cell = summary.get("best") or {}, summary.get("tuning_cost") or {}, summary.get("cell") or {}
        states = summary.get("states") or {}
        rows.append(
            {
                "study": name,
                "task": cell.get("task"),
                "budget": cell.get("budget"),
                "label": labels.get(name, cell.get("method")),
                "trials": summary.get("trials"),
                "complete": states.get("complete", 0),
                "pruned": states.get("pruned", 0),
                "failed": states.get("fail", 0),
                "best_trial": best.get("trial"),
                "best_value": best.get("value"),
                "best_params": params_text(best.get("params") or {}),
                "on_edge": ", ".join(
                    edge_params(best.get("params") or {}, (summary.get("search") or {}).get("space") or {})
                ),
                "tuning_seed": summary.get("tuning_seed"),
                "final_seeds": ",".join(map(str, summary.get("final_seeds") or [])) or None,
                "tuning_train_s": cost.get("train_seconds"),
                "tuning_eval_s": cost.get("eval_seconds"),
                "tuning_tokens": cost.get("train_tokens"),
            }
        )
    frame = pd.DataFrame(rows).sort_values(["task", "budget", "label"]) if rows else pd.DataFrame(rows)
    retries = [summary.get("retries") or 0 for summary in studies.values()]
    if any(retries):  # trials whose worker died and ran again (harness.sweep); a column only where there were some
        frame.insert(frame.columns.get_loc("failed") + 1, "retries", [
            (studies[name].get("retries") or 0) for name in frame["study"]
        ])  # fmt: skip
    return frame


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def edge_params(params: dict[str, Any], space: dict[str, Any]) -> list[str]:
    """Searched parameters whose best value sits at an end of its range: the optimum may lie outside it."""
    return [name for name, value in params.items() if name in space and _on_edge(value, space[name])]


def _on_edge(value: Any, distribution: dict[str, Any]) -> bool:
    attributes = distribution.get("attributes") or {}
    if "choices" in attributes:
        choices = list(attributes["choices"])
        ordered = all(isinstance(c, int | float) for c in choices)
        return ordered and len(choices) > 1 and value in (min(choices), max(choices))
    low, high = attributes.get("low"), attributes.get("high")
    if low is None or high is None or high <= low:
        return False
    if attributes.get("log"):
        low, high, value = math.log(low), math.log(high), math.log(value)
    position = (value - low) / (high - low)
    return position <= EDGE_FRACTION or position >= 1 - EDGE_FRACTION
