"""``harness-report RESULTS_DIR``: every table and figure of a results folder, from its records alone.

The report is a pure function of ``runs/*.json`` (the tuned cells'
``studies/*.json``, and harness-eval's ``runs/*.lm_eval.json`` beside the records): running it twice gives the same files, and nothing in
it is typed by hand. A file it cannot use (truncated, of a newer schema, ...)
is named in a warning and listed in the report, never fatal; temporary files
that dead writers left behind are removed before reading. Every string from
a record is escaped in the HTML page.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from harness import records as run_records
from harness.report import plots, render, summary, table

FORMATS = ("md", "csv", "tex", "html")
LATEX_PREAMBLE = "% Needs \\usepackage{booktabs} in the preamble.\n"


class ReportError(ValueError):
    """Bad input: reported as one line naming the option, before anything is written."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="harness-report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="a results folder (the one with runs/ in it)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: RESULTS_DIR/report)")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {', '.join(FORMATS)}")
    parser.add_argument("--reference", default="full", help="method the others are compared with (default: full)")
    return parser.parse_args(argv)


def check_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ReportError(f"--formats: unknown {', '.join(unknown) or '(empty)'}; allowed: {', '.join(FORMATS)}")
    return formats


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        written, tables = build_report(args.results_dir, args.out, check_formats(args.formats), args.reference)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for display in tables:
        print(f"\n{display.caption}\n\n{render.markdown_table(display)}\n")
    print("\n".join(f"wrote {path}" for path in written))
    return 0


def build_report(
    results_dir: Path, out: Path | None, formats: list[str], reference: str
) -> tuple[list[Path], list[render.DisplayTable]]:
    """Writes the report's files; returns them and the main tables (printed by the command)."""
    records, skipped = _load(results_dir)
    lm_eval, bad_scores = run_records.scan_sidecars(results_dir)  # harness-eval's benchmark scores
    frame = table.records_frame(records, lm_eval)
    studies, bad_studies = summary.scan_study_summaries(results_dir)
    skipped = _warn_about_skipped([*skipped, *bad_scores, *bad_studies], results_dir)
    chosen = summary.quality_rows(frame, studies)
    methods = sorted(set(frame["method"]))
    if reference != "full" and reference not in methods:
        raise ReportError(f"--reference: no records of method {reference!r}; methods present: {', '.join(methods)}")
    _warn_about_mixed_settings(frame)
    cells = summary.summarize(chosen, reference, frame)
    tuning = summary.tuning_rows(frame, studies)
    unfinished = summary.unfinished_rows(frame)
    out = Path(out) if out is not None else Path(results_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "index.csv", out / "index.parquet"]
    frame.to_csv(written[0], index=False)
    frame.to_parquet(written[1], index=False)
    tables = render.display_tables(cells, reference) if not cells.empty else []
    figures = _figures(out / "plots", tables, cells, chosen, frame, tuning, studies, records)
    written += [path.with_suffix(s) for paths in figures.values() for path in paths for s in (".png", ".pdf")]
    context = _Context(results_dir, records, frame, tables, tuning, unfinished, figures, skipped)
    writers = {"md": _write_markdown, "csv": _write_csv, "tex": _write_latex, "html": _write_html}
    for name in formats:
        written += writers[name](out, context, cells)
    return written, tables


def _load(results_dir: Path) -> tuple[list[dict[str, Any]], list[run_records.RecordFile]]:
    """The usable run records and the files skipped; temporary files left by dead writers are removed first."""
    if not Path(results_dir).is_dir():
        raise ReportError(f"RESULTS_DIR: {results_dir} is not a folder")
    for path in run_records.sweep_stale_temporaries(results_dir):
        print(f"note: removed {path}, a temporary file its writer left behind", file=sys.stderr)
    records, skipped = run_records.scan_records(results_dir)
    if not records:
        raise ReportError(f"RESULTS_DIR: no readable run records in {Path(results_dir) / 'runs'}")
    return records, skipped


def _warn_about_skipped(skipped: list[run_records.RecordFile], results_dir: Path) -> list[str]:
    """One warning line per file left out, naming it and why; returns the same as lines for the report
    (paths relative to the results folder, so the report does not depend on where the folder lies)."""
    lines = []
    for found in skipped:
        print(f"warning: skipped {found.path}: {found.problem}", file=sys.stderr)
        lines.append(f"{found.path.relative_to(results_dir).as_posix()}: {found.problem}")
    return lines


class _Context:
    def __init__(self, results_dir, records, frame, tables, tuning, unfinished, figures, skipped):
        self.results_dir, self.records, self.frame = Path(results_dir), records, frame
        self.tables, self.tuning, self.unfinished, self.figures = tables, tuning, unfinished, figures
        self.skipped = skipped  # files left out, each "<path>: <why>"


def _warn_about_mixed_settings(frame: pd.DataFrame) -> None:
    """One line per task whose runs come from several library-version sets or devices: kept apart, never compared."""
    for task, rows in frame[frame["status"] == "success"].groupby("task", sort=True):
        for axis, what in (("software", "library versions"), ("hardware", "devices")):
            values = sorted(set(rows[axis].dropna()))
            if len(values) > 1:
                print(
                    f"warning: {task}: runs from {len(values)} {what} ({' | '.join(values)}) are reported in separate "
                    "tables, never averaged, paired or ranked together",
                    file=sys.stderr,
                )


def _figures(folder, tables, cells, chosen, frame, tuning, studies, records) -> dict[str, list[Path]]:
    """Per display table: the two trade-off plots, quality vs budget, training curves, the tuning plot if tuned."""
    palette = plots.colours(list(frame["label"]))
    curves = table.curves_frame(records, chosen)
    spaces = {name: (s.get("search") or {}).get("space") or {} for name, s in studies.items()}
    figures: dict[str, list[Path]] = {}
    for display in tables:
        rows = cells[[tuple(key) == display.key for key in cells[summary.DISPLAY].itertuples(index=False)]]
        slug, title = render.slug(display.title), display.title
        paths = [
            plots.save(
                plots.tradeoff(rows, "method_params", "method parameters (log)", True, palette, title),
                folder,
                f"{slug}_quality_vs_params",
            ),
            plots.save(
                plots.tradeoff(rows, "train_peak_mib", "training peak memory (MiB)", False, palette, title),
                folder,
                f"{slug}_quality_vs_memory",
            ),
            plots.save(plots.quality_vs_budget(rows, palette, title), folder, f"{slug}_quality_vs_budget"),
        ]
        if rows["forgetting"].notna().any() and rows["forgetting_text"].nunique() == 1:  # one text, one axis
            figure = plots.tradeoff(rows, "forgetting", "forgetting (Δ CE, nats/token)", False, palette, title)
            paths.append(plots.save(figure, folder, f"{slug}_quality_vs_forgetting"))
        run_ids = set(chosen.loc[chosen["cell"].isin(rows["cell"]) & _in_display(chosen, display), "run_id"])
        display_curves = curves[curves["run_id"].isin(run_ids)]
        if not display_curves.empty:
            figure = plots.training_curves(display_curves, rows["metric"].iloc[0], palette, title)
            paths.append(plots.save(figure, folder, f"{slug}_training_curves"))
        trials = frame[
            frame["study"].isin(rows["cell"])
            & _in_display(frame, display)
            & (frame["role"] == "trial")
            & frame["tuned_params"].notna()
        ]
        if not trials.empty and not tuning.empty:
            figure = plots.tuning_isolation(trials, tuning, spaces, palette, title)
            paths.append(plots.save(figure, folder, f"{slug}_tuning"))
        figures[display.title] = paths
    return figures


def _in_display(rows: pd.DataFrame, display) -> pd.Series:
    """Rows of one display table: its task, hardware, software and memory source (a CPU table's curves and
    trials never take in a GPU run of the same cell)."""
    axes = [axis for axis in summary.DISPLAY if axis != "metric"]
    key = dict(zip(summary.DISPLAY, display.key, strict=True))
    return pd.concat(
        [rows[axis].eq(key[axis]) | (rows[axis].isna() & pd.isna(key[axis])) for axis in axes], axis=1
    ).all(axis=1)


# --- writers: each returns the files it wrote -------------------------------------------------------------

TUNING_COLUMNS = {
    "task": "Task",
    "budget": "Budget",
    "label": "Method",
    "trials": "Trials",
    "complete": "Complete",
    "pruned": "Pruned",
    "failed": "Failed",
    "retries": "Retried",  # attempts re-run after their worker died (shown when a study has any)
    "best_trial": "Best trial",
    "best_value": "Best val.",
    "best_params": "Best parameters",
    "on_edge": "On range edge",
    "tuning_train_s": "Tuning train (s)",
}
UNFINISHED_COLUMNS = {
    "status": "Status",
    "task": "Task",
    "budget": "Budget",
    "label": "Method",
    "role": "Role",
    "trial": "Trial",
    "seed": "Seed",
    "error_kind": "Error kind",
    "pruned_at_step": "Pruned at step",
    "error": "Error",
}


# Columns shown only when the frame has them (a figure most reports never have).
OPTIONAL_COLUMNS = ("retries",)


def _readable(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    kept = [c for c in columns if c in frame.columns or c not in OPTIONAL_COLUMNS]
    shown = frame.reindex(columns=kept).rename(columns=columns)
    return shown.map(_cell_text)


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if not value.is_integer() else f"{int(value)}"
    return str(value)


def _environment(records: list[dict[str, Any]]) -> str:
    environments = [r.get("environment") or {} for r in records]
    devices = sorted({str(e.get("gpu") or f"{e.get('cpu')}, {e.get('cpu_count')} CPU cores") for e in environments})
    revisions = sorted(
        {f"{(e.get('git_revision') or '?')[:7]}{' (dirty)' if e.get('git_dirty') else ''}" for e in environments}
    )
    versions = sorted({table.software(r) for r in records})
    return (
        f"Hardware: {'; '.join(devices)}. Software: {' | '.join(versions)}. Code revision(s): {', '.join(revisions)}."
    )


def _counts(frame: pd.DataFrame) -> str:
    counts = frame["status"].value_counts()
    return ", ".join(f"{counts[s]} {s}" for s in ("success", "pruned", "failed") if s in counts)


SKIPPED_NOTE = "Files in the results folder that could not be used, and why; the report is built from the rest."


def _skipped_count(context: _Context) -> str:
    return f"; {len(context.skipped)} files skipped (listed at the end)" if context.skipped else ""


def _write_markdown(out: Path, context: _Context, cells: pd.DataFrame) -> list[Path]:
    text = render.markdown_text
    lines = [f"# Report: {text(context.results_dir.name)}", ""]
    lines += [
        f"From {len(context.records)} run records ({_counts(context.frame)}){_skipped_count(context)}. "
        f"{text(_environment(context.records))}",
        "",
    ]
    for display in context.tables:
        lines += [f"## {text(display.title)}", "", text(display.caption), "", render.markdown_table(display), ""]
        lines += [f"- {text(note)}" for note in display.notes] + [""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in context.figures.get(display.title, [])] + [""]
    if not context.tuning.empty:
        lines += [
            "## Tuning",
            "",
            "Trials per tuned cell, best trial by validation score, and the compute tuning spent.",
            "",
        ]
        lines += [render.markdown_frame(_readable(context.tuning, TUNING_COLUMNS)), ""]
    lines += ["## Failed and pruned runs", ""]
    if context.unfinished.empty:
        lines += ["None.", ""]
    else:
        lines += [render.markdown_frame(_readable(context.unfinished, UNFINISHED_COLUMNS)), ""]
    if context.skipped:
        lines += ["## Skipped files", "", SKIPPED_NOTE, ""]
        lines += [f"- {text(line)}" for line in context.skipped] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return [path]


def _write_csv(out: Path, context: _Context, cells: pd.DataFrame) -> list[Path]:
    paths = [out / "summary.csv", out / "tuning.csv", out / "failed_and_pruned.csv"]
    cells.drop(columns=["budget_rank"], errors="ignore").to_csv(paths[0], index=False)
    context.tuning.to_csv(paths[1], index=False)
    context.unfinished.to_csv(paths[2], index=False)
    return paths


def _write_latex(out: Path, context: _Context, cells: pd.DataFrame) -> list[Path]:
    path = out / "summary.tex"
    path.write_text(LATEX_PREAMBLE + "\n".join(render.latex_table(display) for display in context.tables))
    return [path]


HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { caption-side: top; text-align: left; padding-bottom: 0.4em; color: #444; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th { border-bottom: 2px solid #222; }
td:first-child, th:first-child { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; margin: 1em 0; }
.figures img { max-width: calc(50% - 0.5em); height: auto; }
.notes { font-size: 0.85em; color: #555; }
"""


def _write_html(out: Path, context: _Context, cells: pd.DataFrame) -> list[Path]:
    """One self-contained page: the figures are embedded, so it can be mailed or attached as is."""
    title = f"Report: {html.escape(context.results_dir.name)}"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{HTML_STYLE}</style></head><body>"
    ]
    parts.append(
        f"<h1>{title}</h1><p>From {len(context.records)} run records ({_counts(context.frame)})"
        f"{html.escape(_skipped_count(context))}. "
        f"{html.escape(_environment(context.records))}</p>"
    )
    for display in context.tables:
        parts += [f"<h2>{html.escape(display.title)}</h2>", render.html_table(display)]
        parts.append("<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in display.notes) + "</ul>")
        figures = context.figures.get(display.title, [])
        if figures:  # two to a row (a flex row: inline images with margins wrapped one to a row; tests/test_browser.py)
            parts.append("<p class='figures'>")
            for png in figures:
                encoded = base64.b64encode(png.read_bytes()).decode()
                parts.append(f"<img alt='{html.escape(png.stem)}' src='data:image/png;base64,{encoded}'>")
            parts.append("</p>")
    if not context.tuning.empty:
        parts += ["<h2>Tuning</h2>", _readable(context.tuning, TUNING_COLUMNS).to_html(index=False, escape=True)]
    parts.append("<h2>Failed and pruned runs</h2>")
    parts.append(
        "<p>None.</p>"
        if context.unfinished.empty
        else _readable(context.unfinished, UNFINISHED_COLUMNS).to_html(index=False, escape=True)
    )
    if context.skipped:
        parts += ["<h2>Skipped files</h2>", f"<p>{html.escape(SKIPPED_NOTE)}</p>"]
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in context.skipped) + "</ul>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return [path]


if __name__ == "__main__":
    sys.exit(main())
