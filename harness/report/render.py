"""The report's tables as a reader sees them: formatted cells, the best value per column in bold.

One display table per task is built once (strings plus a mask of bold
cells); Markdown, LaTeX (booktabs, via pandas' Styler) and HTML only differ
in how they write bold and the few symbols LaTeX needs spelled out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report.summary import BLOCK

MEMORY_NOTES = {
    "process_rss_sampled_20ms": "peak process RSS growth during training on CPU, sampled every 20 ms",
    "cuda_max_memory_allocated": "peak CUDA memory allocated by tensors, weights included",
}


@dataclass
class DisplayTable:
    task: str
    caption: str
    cells: pd.DataFrame  # formatted strings
    bold: pd.DataFrame  # same shape, True where the value is the best of its column in its block
    notes: list[str]


def display_tables(summary: pd.DataFrame, reference: str) -> list[DisplayTable]:
    return [_display_table(task, rows, reference) for task, rows in summary.groupby("task", sort=True)]


def _display_table(task: str, rows: pd.DataFrame, reference: str) -> DisplayTable:
    metric, split = rows["metric"].iloc[0], rows["split"].iloc[0]
    higher = bool(rows["higher_is_better"].iloc[0])
    has_reference = bool(rows["is_reference"].any())
    columns = {}
    if rows["model"].nunique() > 1:
        columns["Model"] = rows["model"]
    if rows["budget"].nunique() > 1:
        columns["Budget"] = rows["budget"]
    columns["Method"] = rows["label"]
    quality = f"{metric} ({split})"
    columns[quality] = [_mean_std(m, s) for m, s in zip(rows["mean"], rows["std"], strict=True)]
    columns["n"] = rows["n"].astype(str)
    columns["95% CI"] = [_interval(lo, hi) for lo, hi in zip(rows["ci_low"], rows["ci_high"], strict=True)]
    columns["Trainable"] = rows["trainable"].map(_count)
    columns["Trainable %"] = rows["trainable_pct"].map(lambda v: f"{v:.3g}")
    columns["Peak mem (MiB)"] = rows["peak_mem_mib"].map(lambda v: _number(v, 0))
    columns["Train (s)"] = rows["train_s"].map(lambda v: _number(v, 1))
    columns["Tokens/s"] = rows["tokens_per_s"].map(lambda v: _number(v, 0))
    if has_reference:
        columns[f"Δ vs {reference}"] = [
            "ref" if ref else _signed(d) for ref, d in zip(rows["is_reference"], rows["delta"], strict=True)
        ]
        columns["p (t)"] = rows["p_ttest"].map(_p_value)
        columns["p (W)"] = rows["p_wilcoxon"].map(_p_value)
    columns["Pareto"] = [_pareto(p, m) for p, m in zip(rows["pareto_params"], rows["pareto_memory"], strict=True)]
    cells = pd.DataFrame(columns).reset_index(drop=True)
    bold = _bold_mask(rows.reset_index(drop=True), cells.columns, quality, higher)
    notes = _notes(rows, reference, has_reference, higher)
    caption = (
        f"{task}: {metric} on the {split} split, mean ± sample std over seeds (n), t-based 95% CI; "
        f"best per column in bold{' within each budget' if 'Budget' in columns else ''}."
    )
    return DisplayTable(task, caption, cells, bold, notes)


def _bold_mask(rows: pd.DataFrame, columns: pd.Index, quality: str, higher: bool) -> pd.DataFrame:
    bold = pd.DataFrame(False, index=rows.index, columns=columns)
    # (source column, best end, decimals shown): values equal as displayed are tied, so all of them are bold.
    sources = {
        quality: ("mean", "max" if higher else "min", 3),
        "Trainable": ("trainable", "min", None),
        "Trainable %": ("trainable_pct", "min", None),
        "Peak mem (MiB)": ("peak_mem_mib", "min", 0),
        "Train (s)": ("train_s", "min", 1),
        "Tokens/s": ("tokens_per_s", "max", 0),
    }
    for _, block in rows.groupby(BLOCK, sort=False):
        if len(block) < 2:
            continue
        for column, (source, best, decimals) in sources.items():
            values = block[source].astype(float)
            values = values.round(decimals) if decimals is not None else values
            if values.isna().all():
                continue
            target = values.max() if best == "max" else values.min()
            bold.loc[block.index, column] = values == target
    return bold


def _notes(rows: pd.DataFrame, reference: str, has_reference: bool, higher: bool) -> list[str]:
    notes = [
        "Pareto: on the front of quality against trainable parameters (params) or against peak memory (memory), "
        "within the budget.",
        "Peak mem: " + "; ".join(MEMORY_NOTES.get(s, str(s)) for s in sorted(set(rows["memory_source"].dropna()))) + ".",
    ]
    if has_reference:
        notes.append(
            f"Δ: mean paired difference to {reference} over matching seeds "
            f"({'positive is better' if higher else 'negative is better'}); p (t): paired t-test; "
            "p (W): Wilcoxon signed-rank, reported from 6 pairs."
        )
    else:
        notes.append(f"No {reference} runs in this task, so no paired comparison (choose one with --reference).")
    tuned = rows[rows["role"] == "final"]
    if len(tuned):
        notes.append("Tuned methods are reported by their finals: the best trial's configuration re-run per seed.")
    return notes


def _mean_std(mean: float, std: float) -> str:
    if not _finite(mean):
        return "–"
    return _number(mean, 3) if not _finite(std) else f"{_number(mean, 3)} ± {_number(std, 3)}"


def _interval(low: float, high: float) -> str:
    return f"[{_number(low, 3)}, {_number(high, 3)}]" if _finite(low) and _finite(high) else "–"


def _count(value: float) -> str:
    if not _finite(value):
        return "–"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= size:
            return f"{value / size:.2f}{suffix}"
    return f"{int(value)}"


def _number(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}" if _finite(value) else "–"


def _signed(value: float) -> str:
    return f"{value:+.3f}" if _finite(value) else "–"


def _p_value(value: float) -> str:
    if not _finite(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _pareto(params: bool, memory: bool) -> str:
    return ", ".join(name for name, on in (("params", params), ("memory", memory)) if on)


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# --- writers -------------------------------------------------------------------------------------------


def markdown_table(table: DisplayTable) -> str:
    cells = table.cells.where(~table.bold, "**" + table.cells + "**")
    header = "| " + " | ".join(cells.columns) + " |"
    rule = "|" + "|".join("---" if c in ("Method", "Model", "Budget") else "---:" for c in cells.columns) + "|"
    body = ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def latex_table(table: DisplayTable) -> str:
    """A booktabs ``table`` environment; needs ``\\usepackage{booktabs}`` in the preamble."""
    styler = table.cells.style.hide(axis="index")
    styler = styler.format(escape="latex").format_index(escape="latex", axis=1)
    styler = styler.apply(lambda _: table.bold.map(lambda b: "textbf:--rwrap;" if b else ""), axis=None)
    alignment = "".join("l" if c in ("Method", "Model", "Budget") else "r" for c in table.cells.columns)
    latex = styler.to_latex(
        hrules=True,
        column_format=alignment,
        caption=_latex_text(table.caption),
        label=f"tab:{slug(table.task)}",
        position="t",
        position_float="centering",
    )
    return latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("–", "--")


def html_table(table: DisplayTable) -> str:
    styler = table.cells.style.hide(axis="index").set_uuid(slug(table.task))  # stable ids: same records, same page
    styler = styler.apply(lambda _: table.bold.map(lambda b: "font-weight: bold" if b else ""), axis=None)
    return styler.set_caption(table.caption).set_table_attributes('class="results"').to_html()


def _latex_text(text: str) -> str:
    for raw, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(raw, escaped)
    return text


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in text).strip("-").lower()


def markdown_frame(frame: pd.DataFrame) -> str:
    """A plain table of already formatted strings (tuning, failed runs)."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
