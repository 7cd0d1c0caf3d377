"""Every column of the report, declared once: where its value comes from, how seeds combine, how it reads.

``COLUMNS`` lists the columns of ``summary.csv`` in that file's order. Those
with a header are also the main table's columns (Markdown, LaTeX, HTML), in
the same order. summary.py aggregates a cell's seeds with ``seeds``;
render.py formats, bolds and aligns with the rest. So adding a column is one
entry here (and a test); a number or a rule that two places would need
(decimals shown and decimals that tie, the confidence level in a header)
lives in one entry or one constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from harness.report.stats import CONFIDENCE

MISSING = "–"  # a value that is absent, NaN or infinite; LaTeX writes it "--"


@dataclass(frozen=True)
class Column:
    """One column: a key of the summary frame and, when it has a header, a column of the main table."""

    key: str  # in the summary frame and summary.csv
    # Index field (table.records_frame) the value comes from; None: summary.py computes it (statistics over the
    # seeds' scores, the paired comparison, Pareto fronts).
    source: str | None = None
    # How a cell's seeds give one value; None for a cell key (summary.CELL groups by it) or a computed column.
    seeds: Callable[[pd.Series], Any] | None = None
    # Main-table header, unit included; may name {metric}, {split}, {kind} (RSS or CUDA) and {reference}.
    # None: summary.csv only.
    header: str | None = None
    show: Callable[..., str] = str  # the cell text, from the values of ``reads`` (and ``decimals`` when set)
    reads: tuple[str, ...] = ()  # keys ``show`` takes; () is the key alone
    decimals: int | None = None  # shown precision; values equal at it tie for bold
    better: Literal["higher", "lower", "metric"] | None = None  # bold end; "metric": the primary metric's direction
    when: Callable[[pd.DataFrame], bool] | None = None  # shown only for the rows of a table where this holds
    align: Literal["l", "r"] = "r"
    beside: str | None = None  # shown right after this key's column rather than in summary.csv's order

    def texts(self, rows: pd.DataFrame) -> list[str]:
        """The formatted cells of this column for a table's rows."""
        extra = () if self.decimals is None else (self.decimals,)
        return [
            self.show(*values, *extra) for values in zip(*(rows[k] for k in self.reads or (self.key,)), strict=True)
        ]


# --- how seeds combine --------------------------------------------------------------------------------------


def first(values: pd.Series) -> Any:
    """A value every seed of a cell shares (its counts, its metric): the first seed's."""
    return values.iloc[0]


def mean(values: pd.Series) -> float:
    """A measurement each seed repeats (memory, time): their mean, missing values skipped."""
    return values.mean()


def _objective(values: pd.Series) -> str:
    return values.fillna("cls").iloc[0]  # a classification run records no objective


def _one_or_mixed(values: pd.Series) -> Any:
    """A value the seeds should share (the text forgetting was scored on): "mixed" when they do not, so that a
    mean over different texts is never read as one figure."""
    distinct = values.dropna().unique()
    return distinct[0] if len(distinct) == 1 else ("mixed" if len(distinct) else None)


def _flag(values: pd.Series) -> bool:
    return bool(values.iloc[0])


# --- how a value reads --------------------------------------------------------------------------------------


def finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def number(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}" if finite(value) else MISSING


def significant(value: float) -> str:
    return f"{value:.3g}" if finite(value) else MISSING


def count(value: float) -> str:
    """1.23M, 40.00K, 770: parameter counts span nine orders of magnitude."""
    if not finite(value):
        return MISSING
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= size:
            return f"{value / size:.2f}{suffix}"
    return f"{int(value)}"


def mean_std(mean: float, std: float, decimals: int) -> str:
    if not finite(mean):
        return MISSING
    return number(mean, decimals) if not finite(std) else f"{number(mean, decimals)} ± {number(std, decimals)}"


def interval(low: float, high: float, decimals: int) -> str:
    return f"[{number(low, decimals)}, {number(high, decimals)}]" if finite(low) and finite(high) else MISSING


def difference(is_reference: bool, delta: float, decimals: int) -> str:
    if is_reference:
        return "ref"
    return f"{delta:+.{decimals}f}" if finite(delta) else MISSING


def p_value(value: float) -> str:
    if not finite(value):
        return MISSING
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def fronts(params: bool, memory: bool, forgetting: bool) -> str:
    return ", ".join(name for name, on in (("params", params), ("memory", memory), ("forgetting", forgetting)) if on)


def _varies(key: str) -> Callable[[pd.DataFrame], bool]:
    return lambda rows: rows[key].nunique() > 1


def _counted(key: str) -> Callable[[pd.DataFrame], bool]:
    """Shown where some row has the figure: records from before it was measured have none."""
    return lambda rows: bool(rows[key].notna().any())


def has_reference(rows: pd.DataFrame) -> bool:
    return bool(rows["is_reference"].any())


QUALITY_DECIMALS = 3

C = Column
COLUMNS: tuple[Column, ...] = (
    # The cell: summary.CELL groups seeds by these, so each holds one value per cell.
    C("model", "model", header="Model", when=_varies("model"), align="l"),
    C("task", "task"),
    C("method", "method"),
    C("budget", "budget", header="Budget", when=_varies("budget"), align="l"),
    C("hardware", "hardware"),
    C("software", "software"),
    C("memory_source", "memory_source"),
    C("label", "label", header="Method", align="l"),
    C("cell", "cell"),
    C("role", "role", first),
    C("objective", "objective", _objective),
    C("metric", "metric", first),
    C("split", "split", first),
    C("higher_is_better", "higher_is_better", _flag),
    # Statistics over the counted seeds' scores (summary.quality_rows picks the split; stats.summarize_seeds).
    C(
        "mean",
        header="{metric} ({split})",
        show=mean_std,
        reads=("mean", "std"),
        decimals=QUALITY_DECIMALS,
        better="metric",
    ),
    C("std"),
    C("n", header="n"),
    C("ci_low", header=f"{CONFIDENCE:.0%} CI", show=interval, reads=("ci_low", "ci_high"), decimals=QUALITY_DECIMALS),
    C("ci_high"),
    C("seeds"),
    C("left_out"),
    C("tuning_seeds"),
    # Costs.
    C("method_params", "method_params", first, "Method params", count, better="lower"),
    C("trainable", "trainable", first, "Trainable", count, better="lower"),
    C("total_params", "total_params", first),
    C("method_pct", "method_pct", first, "Method %", significant, better="lower", beside="method_params"),
    C("weights_mib", "weights_mib", mean, "Weights (MiB)", number, decimals=0, better="lower"),
    C("train_peak_mib", "train_peak_mib", mean, "Train peak {kind} (MiB)", number, decimals=0, better="lower"),
    C("train_above_mib", "train_above_mib", mean, "Above load (MiB)", number, decimals=0, better="lower"),
    C("eval_peak_mib", "eval_peak_mib", mean),
    C("train_s", "train_s", mean, "Train (s)", number, decimals=1, better="lower"),
    C("tokens_per_s", "tokens_per_s", mean, "Tokens/s", number, decimals=0, better="higher"),
    C("mfu_pct", "mfu_pct", mean, "MFU (%)", number, decimals=1, better="higher", when=_counted("mfu_pct")),
    C("train_tokens", "train_tokens", mean),
    C("train_tflops", "train_tflops", mean),
    C("tuned_params", "tuned_params", first),
    # What training cost elsewhere (harness.forgetting): shown where some record measured it.
    C(
        "forgetting",
        "forgetting",
        mean,
        "Forgetting (Δ CE, nats/token)",
        number,
        decimals=3,
        better="lower",
        when=_counted("forgetting"),
    ),
    C("ce_before", "ce_before", mean),
    C("ce_after", "ce_after", mean),
    C("forgetting_text", "forgetting_text", _one_or_mixed),
    C(
        "retention",
        "retention",
        mean,
        "Retention (2nd task)",
        number,
        decimals=3,
        better="higher",
        when=_counted("retention"),
    ),
    C("retention_task", "retention_task", _one_or_mixed),
    # Paired comparison with the reference method (stats.compare_paired) and Pareto fronts (stats.pareto_front).
    C(
        "delta",
        header="Δ vs {reference}",
        show=difference,
        reads=("is_reference", "delta"),
        decimals=QUALITY_DECIMALS,
        when=has_reference,
    ),
    C("n_pairs"),
    C("p_ttest", header="p (t)", show=p_value, when=has_reference),
    C("p_wilcoxon", header="p (W)", show=p_value, when=has_reference),
    C("is_reference"),
    C("pareto_params", header="Pareto", show=fronts, reads=("pareto_params", "pareto_memory", "pareto_forgetting")),
    C("pareto_memory"),
    C("pareto_forgetting"),
)


# --- benchmark scores of the kept models (harness-eval's sidecars; table.lm_eval_fields) -----------------------

LM_EVAL_AFTER = "tuning_seeds"  # where they stand: after the quality statistics, before the costs
METRIC_NAMES = {"exact_match": "EM", "acc": "Acc", "acc_norm": "Acc (norm)", "f1": "F1"}


def lm_eval_keys(frame: pd.DataFrame) -> list[str]:
    """The benchmark scores (``lm_eval|<task>|<metric>|<filter>``) some row of ``frame`` holds, sorted."""
    return sorted(k for k in frame.columns if k.startswith("lm_eval|") and len(k.split("|")) == 4)


def _direction(frame: pd.DataFrame, key: str) -> Literal["higher", "lower"] | None:
    """The metric's direction as lm-eval registers it; None (no bold) where runs disagree or it is unknown."""
    found = set(frame[f"{key}|higher"].dropna()) if f"{key}|higher" in frame else set()
    return {True: "higher", False: "lower"}.get(next(iter(found))) if len(found) == 1 else None


def lm_eval_columns(frame: pd.DataFrame) -> list[Column]:
    """One main-table column per benchmark score, mean ± sample std over the seeds evaluated (like the quality
    column), with the std, the direction and the examples scored beside it in summary.csv."""
    built = []
    for key in lm_eval_keys(frame):
        _, task, metric, filter_name = key.split("|")
        header = f"{task} {METRIC_NAMES.get(metric, metric)} [{filter_name}] (lm-eval)"
        built += [
            C(
                key,
                key,
                mean,
                header,
                mean_std_of_evaluated,
                reads=(key, f"{key}|std", f"{key}|seeds", "n"),
                decimals=QUALITY_DECIMALS,
                better=_direction(frame, key),
                when=_counted(key),
            ),
            C(f"{key}|std", key, _std),
            C(f"{key}|higher", f"{key}|higher", _one_or_mixed),
            C(f"{key}|n", f"{key}|n", _one_or_mixed),
            C(f"{key}|setting", f"{key}|setting", _one_or_mixed),
            C(f"{key}|seeds", key, _evaluated),
        ]
    return built


def _std(values: pd.Series) -> float:
    return values.std()


def _evaluated(values: pd.Series) -> int:
    """How many of a cell's seeds have the score (harness-eval may have scored some of them)."""
    return int(values.notna().sum())


def mean_std_of_evaluated(mean: float, std: float, evaluated: int, seeds: int, decimals: int) -> str:
    """mean ± std, saying so when fewer seeds were evaluated than the cell's quality counts."""
    text = mean_std(mean, std, decimals)
    return f"{text} ({evaluated} of {seeds} seeds)" if finite(mean) and finite(seeds) and evaluated < seeds else text


def registry(frame: pd.DataFrame | None = None) -> tuple[Column, ...]:
    """Every column for this frame (records, or cells): COLUMNS, and a column per benchmark score it holds."""
    extra = lm_eval_columns(frame) if frame is not None else []
    if not extra:
        return COLUMNS
    at = next(i for i, column in enumerate(COLUMNS) if column.key == LM_EVAL_AFTER) + 1
    return (*COLUMNS[:at], *extra, *COLUMNS[at:])


def keys(frame: pd.DataFrame | None = None) -> list[str]:
    """summary.csv's columns, in order."""
    return [column.key for column in registry(frame)]


def shown(rows: pd.DataFrame) -> list[Column]:
    """The main table's columns for these rows, in order."""
    visible = [c for c in registry(rows) if c.header and (c.when is None or c.when(rows))]
    order = [c for c in visible if not c.beside]
    for column in (c for c in visible if c.beside):
        order.insert(next(i for i, c in enumerate(order) if c.key == column.beside) + 1, column)
    return order
