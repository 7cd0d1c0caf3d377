"""The report's tables as a reader sees them: formatted cells, the best value per column in bold.

One display table per task is built once (strings plus a mask of bold
cells); Markdown, LaTeX (booktabs, via pandas' Styler) and HTML only differ
in how they write bold and the few symbols LaTeX needs spelled out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report.summary import DISPLAY

# What each memory source measures, for the table's notes. Schema-1 records (one window, evaluation included)
# name their sources differently, so a report over old records says what those numbers were.
MEMORY_NOTES = {
    "linux_vmhwm": "the process's peak resident memory over training steps only (the kernel's high-water mark, "
    "VmHWM, reset when training starts and after each evaluation), weights, optimizer state, activations and the "
    "Python runtime included",
    "rss_sampled_20ms": "the process's peak resident memory over training steps only, sampled every 20 ms (a "
    "shorter spike can be missed), weights and the Python runtime included",
    "cuda_max_memory_allocated": "the CUDA allocator's peak of live tensors over training steps only "
    "(torch.cuda.max_memory_allocated), weights included",
    "none": "not recorded under this name (schema-1 records: one window, evaluation included; see index.csv)",
}
MEMORY_KIND = {"cuda_max_memory_allocated": "CUDA"}  # every other source is the process's resident memory


@dataclass
class DisplayTable:
    task: str
    title: str  # the task, plus what sets this table apart from the task's others (hardware, versions, metric)
    caption: str
    cells: pd.DataFrame  # formatted strings
    bold: pd.DataFrame  # same shape, True where the value is the best of its column in its block
    notes: list[str]
    key: tuple  # the DISPLAY values of its rows


SOURCE_TITLES = {"linux_vmhwm": "RSS peak (VmHWM)", "rss_sampled_20ms": "RSS sampled", "none": "schema-1 records"}


def display_tables(summary: pd.DataFrame, reference: str) -> list[DisplayTable]:
    """One table per task, setting and metric, titled by the task and whatever sets it apart from the task's others
    (a memory source only where it differs on the same hardware: across devices the hardware says it)."""
    tables = []
    for key, rows in summary.groupby(DISPLAY, sort=True, dropna=False):
        siblings = summary[summary["task"] == key[0]]
        parts = []
        for column, value in zip(DISPLAY[1:], key[1:], strict=True):
            varies = siblings.groupby("hardware")[column].nunique().max() if column == "memory_source" else siblings[column].nunique()
            if varies > 1:
                parts.append(SOURCE_TITLES.get(value, str(value)) if column == "memory_source" else str(value))
        tables.append(_display_table(rows, reference, " · ".join([key[0], *parts]), tuple(key)))
    return tables


def _display_table(rows: pd.DataFrame, reference: str, title: str, key: tuple) -> DisplayTable:
    task, metric, split = rows["task"].iloc[0], rows["metric"].iloc[0], rows["split"].iloc[0]
    higher = bool(rows["higher_is_better"].iloc[0])
    has_reference = bool(rows["is_reference"].any())
    kind = MEMORY_KIND.get(rows["memory_source"].iloc[0], "RSS")
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
    columns["Method params"] = rows["method_params"].map(_count)
    columns["Method %"] = rows["method_pct"].map(lambda v: f"{v:.3g}" if _finite(v) else "–")
    columns["Trainable"] = rows["trainable"].map(_count)
    columns["Weights (MiB)"] = rows["weights_mib"].map(lambda v: _number(v, 0))
    columns[f"Train peak {kind} (MiB)"] = rows["train_peak_mib"].map(lambda v: _number(v, 0))
    columns["Above load (MiB)"] = rows["train_above_mib"].map(lambda v: _number(v, 0))
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
    bold = _bold_mask(rows.reset_index(drop=True), cells.columns, quality, kind, higher)
    notes = _notes(rows, reference, has_reference, kind)
    caption = (
        f"{task}: {metric} on the {split} split, mean ± sample std over seeds (n), t-based 95% CI; "
        f"best per column in bold{' within each budget' if 'Budget' in columns else ''}. "
        f"Measured on {rows['hardware'].iloc[0]} with {rows['software'].iloc[0]}."
    )
    return DisplayTable(task, title, caption, cells, bold, notes, key)


def _bold_mask(rows: pd.DataFrame, columns: pd.Index, quality: str, kind: str, higher: bool) -> pd.DataFrame:
    bold = pd.DataFrame(False, index=rows.index, columns=columns)
    # (source column, best end, decimals shown): values equal as displayed are tied, so all of them are bold.
    sources = {
        quality: ("mean", "max" if higher else "min", 3),
        "Method params": ("method_params", "min", None),
        "Method %": ("method_pct", "min", None),
        "Trainable": ("trainable", "min", None),
        "Weights (MiB)": ("weights_mib", "min", 0),
        f"Train peak {kind} (MiB)": ("train_peak_mib", "min", 0),
        "Above load (MiB)": ("train_above_mib", "min", 0),
        "Train (s)": ("train_s", "min", 1),
        "Tokens/s": ("tokens_per_s", "max", 0),
    }
    for _, block in rows.groupby("budget", sort=False):
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


def _notes(rows: pd.DataFrame, reference: str, has_reference: bool, kind: str) -> list[str]:
    higher = bool(rows["higher_is_better"].iloc[0])
    sources = sorted(set(rows["memory_source"].dropna()))
    notes = [
        "Method params: parameters the method adds or unfreezes, the task head excluded (Method %: of the model's "
        "parameters, each tensor counted once); Trainable: every parameter the optimizer updates (method, head, and "
        "a value model where one trains).",
        f"Train peak {kind}: " + "; ".join(MEMORY_NOTES.get(s, str(s)) for s in sources) + ". Above load: that peak "
        "minus the memory in use when training began (model loaded). Weights: bytes of the trained model's parameters "
        "and buffers as stored (a 4-bit base at its packed size).",
        "Pareto: on the front of quality against the method's own parameters (params) or against the training peak "
        "memory (memory), within the budget.",
    ]
    if has_reference:
        notes.append(
            f"Δ: mean paired difference to {reference} over matching seeds "
            f"({'positive is better' if higher else 'negative is better'}); p (t): paired t-test; "
            "p (W): Wilcoxon signed-rank, reported from 6 non-zero paired differences."
        )
    else:
        notes.append(f"No {reference} runs in this table, so no paired comparison (choose one with --reference).")
    notes += _tuning_notes(rows)
    notes += [f"{row.label}: left out {row.left_out}." for row in rows.itertuples() if row.left_out]
    return notes


def _tuning_notes(rows: pd.DataFrame) -> list[str]:
    """Which seed tuned and which seeds were scored; a final that shares the tuning seed is named."""
    tuned = rows[rows["role"] == "final"]
    if tuned.empty:
        return []
    tuning = sorted({s for seeds in tuned["tuning_seeds"].dropna() for s in seeds.split(",") if s}, key=int)
    scored = sorted({s for seeds in tuned["seeds"].dropna() for s in seeds.split(",") if s}, key=int)
    notes = [
        "Tuned methods are reported by their finals: the best trial's configuration re-run per seed. "
        f"Trials ran on seed {', '.join(tuning) or '?'}; finals were scored on seeds {', '.join(scored)}."
    ]
    for row in tuned.itertuples():
        shared = set((row.seeds or "").split(",")) & set((row.tuning_seeds or "").split(",")) - {""}
        if shared:
            notes.append(
                f"{row.label}: final seed {', '.join(sorted(shared, key=int))} is also a tuning seed (set explicitly), "
                "so that final repeats the winning trial's draw and carries the selection's optimism."
            )
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
        label=f"tab:{slug(table.title)}",
        position="t",
        position_float="centering",
    )
    return latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("–", "--")


def html_table(table: DisplayTable) -> str:
    styler = table.cells.style.hide(axis="index").set_uuid(slug(table.title))  # stable ids: same records, same page
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
