"""The report's tables as a reader sees them: formatted cells, the best value per column in bold.

One display table per task is built once (strings plus a mask of bold
cells); Markdown, LaTeX (booktabs, via pandas' Styler) and HTML only differ
in how they write bold and the few symbols LaTeX needs spelled out. Which
columns there are, and how each reads and bolds, is columns.COLUMNS.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

import pandas as pd

from harness.report import columns as registry
from harness.report.stats import CONFIDENCE, MIN_WILCOXON_PAIRS
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
    align: str  # per column, "l" or "r"


SOURCE_TITLES = {"linux_vmhwm": "RSS peak (VmHWM)", "rss_sampled_20ms": "RSS sampled", "none": "schema-1 records"}


def display_tables(summary: pd.DataFrame, reference: str) -> list[DisplayTable]:
    """One table per task, setting and metric, titled by the task and whatever sets it apart from the task's others
    (a memory source only where it differs on the same hardware: across devices the hardware says it)."""
    tables = []
    for key, rows in summary.groupby(DISPLAY, sort=True, dropna=False):
        siblings = summary[summary["task"] == key[0]]
        parts = []
        for column, value in zip(DISPLAY[1:], key[1:], strict=True):
            varies = (
                siblings.groupby("hardware")[column].nunique().max()
                if column == "memory_source"
                else siblings[column].nunique()
            )
            if varies > 1:
                parts.append(SOURCE_TITLES.get(value, str(value)) if column == "memory_source" else str(value))
        tables.append(_display_table(rows, reference, " · ".join([key[0], *parts]), tuple(key)))
    return tables


def _display_table(rows: pd.DataFrame, reference: str, title: str, key: tuple) -> DisplayTable:
    task, metric, split = rows["task"].iloc[0], rows["metric"].iloc[0], rows["split"].iloc[0]
    higher = bool(rows["higher_is_better"].iloc[0])
    kind = MEMORY_KIND.get(rows["memory_source"].iloc[0], "RSS")
    shown = registry.shown(rows)
    context = {"metric": metric, "split": split, "kind": kind, "reference": reference}
    headers = [column.header.format(**context) for column in shown]
    cells = pd.DataFrame({h: c.texts(rows) for h, c in zip(headers, shown, strict=True)})
    bold = _bold_mask(rows.reset_index(drop=True), shown, headers, higher)
    notes = _notes(rows, reference, registry.has_reference(rows), kind)
    per_budget = any(column.key == "budget" for column in shown)
    caption = (
        f"{task}: {metric} on the {split} split, mean ± sample std over seeds (n), t-based {CONFIDENCE:.0%} CI; "
        f"best per column in bold{' within each budget' if per_budget else ''}. "
        f"Measured on {rows['hardware'].iloc[0]} with {rows['software'].iloc[0]}."
    )
    return DisplayTable(task, title, caption, cells, bold, notes, key, "".join(c.align for c in shown))


def _bold_mask(rows: pd.DataFrame, shown: list[registry.Column], headers: list[str], higher: bool) -> pd.DataFrame:
    """The best value of each column with a direction, per budget; values equal as displayed tie, all bold."""
    bold = pd.DataFrame(False, index=rows.index, columns=headers)
    for _, block in rows.groupby("budget", sort=False):
        if len(block) < 2:
            continue
        for header, column in zip(headers, shown, strict=True):
            if column.better is None:
                continue
            values = block[column.key].astype(float)
            values = values.round(column.decimals) if column.decimals is not None else values
            if values.isna().all():
                continue
            highest = column.better == "higher" or (column.better == "metric" and higher)
            bold.loc[block.index, header] = values == (values.max() if highest else values.min())
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
        "memory (memory)"
        + (", or against forgetting (forgetting)" if rows["forgetting"].notna().any() else "")
        + ", within the budget.",
    ]
    notes += _retention_notes(rows)
    notes += _lm_eval_notes(rows)
    if has_reference:
        notes.append(
            f"Δ: mean paired difference to {reference} over matching seeds "
            f"({'positive is better' if higher else 'negative is better'}); p (t): paired t-test; "
            f"p (W): Wilcoxon signed-rank, reported from {MIN_WILCOXON_PAIRS} non-zero paired differences."
        )
    else:
        notes.append(f"No {reference} runs in this table, so no paired comparison (choose one with --reference).")
    notes += _tuning_notes(rows)
    notes += [f"{row.label}: left out {row.left_out}." for row in rows.itertuples() if row.left_out]
    return notes


def _lm_eval_notes(rows: pd.DataFrame) -> list[str]:
    """What the (lm-eval) columns are, and on how many examples each was scored."""
    keys = [key for key in registry.lm_eval_keys(rows) if rows[key].notna().any()]
    if not keys:
        return []
    counts = sorted({f"{key.split('|')[1]} {value}" for key in keys for value in rows[f"{key}|n"].dropna()})
    return [
        "(lm-eval): lm-evaluation-harness scores of each seed's kept model (harness-eval), after the filter named "
        f"in brackets, mean ± sample std over the seeds evaluated; examples scored: {', '.join(counts)}."
    ]


def _retention_notes(rows: pd.DataFrame) -> list[str]:
    """What the forgetting and retention columns measured, and a warning when rows scored different texts."""
    notes = []
    texts = set(rows["forgetting_text"].dropna())
    if texts:
        warning = (
            f" Rows here scored {len(texts)} different texts or cuts ({', '.join(sorted(texts))}): not comparable, "
            "so no forgetting front or plot; a cell whose seeds differ shows none."
            if len(texts) > 1 or "mixed" in texts
            else f" Text {next(iter(texts))} (sha256 prefix: tokens x window length)."
        )
        notes.append(
            "Forgetting: the rise of the model's per-token cross-entropy (nats) on a fixed sample of general text, "
            "after training minus before (the starting model as loaded); lower is better. Per token of each model's "
            "own tokenizer, so compare models with different tokenizers with care." + warning
        )
    tasks = set(rows["retention_task"].dropna())
    if tasks:
        notes.append(
            f"Retention: the final model's primary metric on the test split of {', '.join(sorted(tasks))}, "
            "a second task with the same labels; higher is better."
        )
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


# --- writers -------------------------------------------------------------------------------------------


def markdown_table(table: DisplayTable) -> str:
    shown = table.cells.map(markdown_text)
    cells = shown.where(~table.bold, "**" + shown + "**")
    header = "| " + " | ".join(markdown_text(c) for c in cells.columns) + " |"
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in table.align) + "|"
    body = ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body])


# Where Markdown would pass raw HTML through: a tag, a closing tag, a comment or declaration, an autolink.
_MARKUP_START = re.compile(r"<(?=[A-Za-z/!?])")


def markdown_text(text: str) -> str:
    """Text from records made inert in Markdown: renderers pass raw HTML through, so every ``<`` that could
    open a tag, comment or autolink is written as ``&lt;`` (shown as ``<``); a bare ``<0.001`` stays."""
    return _MARKUP_START.sub("&lt;", str(text))


def latex_table(table: DisplayTable) -> str:
    """A booktabs ``table`` environment; needs ``\\usepackage{booktabs}`` in the preamble."""
    styler = table.cells.style.hide(axis="index")
    styler = styler.format(escape="latex").format_index(escape="latex", axis=1)
    styler = styler.apply(lambda _: table.bold.map(lambda b: "textbf:--rwrap;" if b else ""), axis=None)
    latex = styler.to_latex(
        hrules=True,
        column_format=table.align,
        caption=_latex_text(table.caption),
        label=f"tab:{slug(table.title)}",
        position="t",
        position_float="centering",
    )
    return latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace(registry.MISSING, "--")


def html_table(table: DisplayTable) -> str:
    """The table as HTML; cells, headers and caption come from records, so all are escaped (pandas' Styler
    writes them as they are unless told to)."""
    styler = table.cells.style.hide(axis="index").set_uuid(slug(table.title))  # stable ids: same records, same page
    styler = styler.format(escape="html").format_index(escape="html", axis=1)
    styler = styler.apply(lambda _: table.bold.map(lambda b: "font-weight: bold" if b else ""), axis=None)
    return styler.set_caption(html.escape(table.caption)).set_table_attributes('class="results"').to_html()


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
}
_LATEX_SPECIAL = re.compile("|".join(re.escape(c) for c in LATEX_SPECIALS))


def _latex_text(text: str) -> str:
    """A caption (task, metric, hardware names from records) as LaTeX text: every special character escaped
    in one pass, so a name cannot open a group, a formula or a command."""
    return _LATEX_SPECIAL.sub(lambda m: LATEX_SPECIALS[m.group()], text)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in text).strip("-").lower()


def markdown_frame(frame: pd.DataFrame) -> str:
    """A plain table of already formatted strings (tuning, failed runs)."""
    header = "| " + " | ".join(markdown_text(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(markdown_text(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])
