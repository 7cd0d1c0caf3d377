"""The report's figures (matplotlib, PNG and PDF): trade-offs, budgets, curves, tuning.

Each method keeps one colour in every figure of a report, so a reader can
follow it from the trade-off plot to its training curve. Error bars are the
sample std over seeds, as in the tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harness.report import stats  # noqa: E402

MARKERS = "osD^vP*Xh"
FORMATS = ("png", "pdf")


def colours(labels: list[str]) -> dict[str, tuple]:
    unique = sorted(set(labels))
    palette = plt.get_cmap("tab10" if len(unique) <= 10 else "tab20")
    return {label: palette(i % palette.N) for i, label in enumerate(unique)}


def save(figure, folder: Path, name: str) -> Path:
    """Writes name.png and name.pdf; returns the PNG (the one pages embed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for extension in FORMATS:
        metadata = {"CreationDate": None} if extension == "pdf" else {}  # no timestamp: same records, same bytes
        figure.savefig(folder / f"{name}.{extension}", dpi=150, bbox_inches="tight", metadata=metadata)
    plt.close(figure)
    return folder / f"{name}.png"


def tradeoff(rows: pd.DataFrame, cost: str, xlabel: str, log_x: bool, palette: dict[str, tuple], title: str):
    """Quality against a cost, one marker per method, the Pareto frontier per budget as a step line.

    A log axis becomes symmetric-log when a cost is 0 (a head-only probe adds no method parameters).
    """
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    metric, split = rows["metric"].iloc[0], rows["split"].iloc[0]
    higher = bool(rows["higher_is_better"].iloc[0])
    rows = rows[pd.to_numeric(rows[cost], errors="coerce").notna()]  # records of schema 1 have no such figure
    if rows.empty:
        axes.text(
            0.5, 0.5, f"no {xlabel.split(' (')[0]} in these records", ha="center", va="center", transform=axes.transAxes
        )
        return figure
    budgets = list(dict.fromkeys(rows["budget"]))
    for b, (budget, block) in enumerate(rows.groupby("budget", sort=False)):
        marker = MARKERS[b % len(MARKERS)]
        for row in block.itertuples(index=False):
            std = row.std if math.isfinite(row.std) else 0.0
            axes.errorbar(
                getattr(row, cost),
                row.mean,
                yerr=std,
                fmt=marker,
                color=palette[row.label],
                capsize=3,
                markersize=7,
                label=row.label if len(budgets) == 1 else f"{row.label} ({budget})",
            )
            axes.annotate(
                row.label, (getattr(row, cost), row.mean), textcoords="offset points", xytext=(5, 5), fontsize=8
            )
        _frontier(axes, block, cost, higher)
    if log_x and (rows[cost] <= 0).any():
        axes.set_xscale("symlog", linthresh=1)
        xlabel = xlabel.replace("(log)", "(symmetric log: 0 at the left)")
    elif log_x:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(f"{metric} ({split})")
    axes.set_title(f"{title}: {metric} vs {xlabel.split(' (')[0].lower()}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    return figure


def _frontier(axes, block: pd.DataFrame, cost: str, higher: bool) -> None:
    on_front = stats.pareto_front(block[cost].tolist(), block["mean"].tolist(), higher)
    front = block[on_front].sort_values(cost)
    if front.empty:
        return
    axes.step(front[cost], front["mean"], where="post", color="grey", linestyle="--", linewidth=1, label="Pareto front")
    axes.scatter(front[cost], front["mean"], s=160, facecolors="none", edgecolors="grey", linewidths=1, zorder=3)


def quality_vs_budget(rows: pd.DataFrame, palette: dict[str, tuple], title: str):
    """Quality against the training tokens each budget spent, one line per method."""
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for label, series in rows.sort_values("train_tokens").groupby("label", sort=True):
        std = series["std"].fillna(0.0)
        axes.errorbar(
            series["train_tokens"], series["mean"], yerr=std, marker="o", capsize=3, color=palette[label], label=label
        )
        for row in series.itertuples(index=False):
            axes.annotate(
                row.budget, (row.train_tokens, row.mean), textcoords="offset points", xytext=(4, -10), fontsize=7
            )
    axes.set_xscale("log")
    axes.set_xlabel("training tokens per run (budget)")
    axes.set_ylabel(f"{rows['metric'].iloc[0]} ({rows['split'].iloc[0]})")
    axes.set_title(f"{title}: quality vs budget")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def training_curves(curves: pd.DataFrame, metric: str, palette: dict[str, tuple], title: str):
    """Training loss and validation metric against step, mean over seeds, per method (and budget)."""
    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    several_budgets = curves["budget"].nunique() > 1
    for (label, budget), series in curves.groupby(["label", "budget"], sort=True):
        name = f"{label} ({budget})" if several_budgets else label
        for key, axes in (("loss", loss_axes), (f"eval_{metric}", metric_axes)):
            points = series[series["key"] == key].groupby("step")["value"].mean()
            if len(points):
                axes.plot(points.index, points.values, marker=".", color=palette[label], label=name)
    loss_axes.set_ylabel("training loss")
    metric_axes.set_ylabel(f"validation {metric}")
    for axes in (loss_axes, metric_axes):
        axes.set_xlabel("step")
        axes.grid(True, alpha=0.3)
    metric_axes.legend(fontsize=8)
    figure.suptitle(f"{title}: training curves (mean over seeds)")
    return figure


def tuning_isolation(
    trials: pd.DataFrame, tuning: pd.DataFrame, spaces: dict[str, dict], palette: dict[str, tuple], title: str
):
    """Every trial's validation score against each searched parameter; the best trial starred, range ends dashed."""
    parameters = sorted(
        {p for params in trials["tuned_params"].dropna() for p in json.loads(params) if p in _searched(spaces)}
    )
    parameters = sorted(parameters, key=lambda p: p != "lr")
    figure, axes_row = plt.subplots(1, len(parameters), figsize=(5.4 * len(parameters), 4.2), squeeze=False)
    for parameter, axes in zip(parameters, axes_row[0], strict=True):
        for study, series in trials.groupby("study", sort=True):
            params = series["tuned_params"].map(json.loads)
            if parameter not in params.iloc[0]:
                continue
            label = series["label"].iloc[0]
            info = tuning[tuning["study"] == study].iloc[0]
            x = params.map(lambda p, name=parameter: p[name])
            done = series["status"] == "success"
            axes.scatter(x[done], series["validation"][done], color=palette[label], label=label, alpha=0.8)
            axes.scatter(x[~done], series["validation"][~done], facecolors="none", edgecolors=palette[label], alpha=0.8)
            best = series[series["trial"] == info["best_trial"]]
            if len(best):
                edge = parameter in info["on_edge"].split(", ")
                axes.scatter(
                    x[best.index], best["validation"], marker="*", s=220, color=palette[label], edgecolors="black"
                )
                if edge:
                    axes.annotate(
                        "edge of range",
                        (x[best.index].iloc[0], best["validation"].iloc[0]),
                        textcoords="offset points",
                        xytext=(-20, 10),
                        fontsize=8,
                        color="red",
                    )
            _range_ends(axes, spaces.get(study, {}).get(parameter), palette[label])
        attributes = next((s[parameter] for s in spaces.values() if parameter in s), {}).get("attributes") or {}
        if attributes.get("log"):
            axes.set_xscale("log")
        if _numeric_choices(attributes):
            choices = sorted(
                {c for s in spaces.values() if parameter in s for c in s[parameter]["attributes"]["choices"]}
            )
            axes.set_xscale("log", base=2)
            axes.set_xticks(choices, [str(c) for c in choices])
            axes.set_xlim(min(choices) / 1.4, max(choices) * 1.4)
        axes.set_xlabel(parameter)
        axes.set_ylabel("validation score of the trial")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"{title}: tuning trials (filled: complete, hollow: pruned or failed, star: best)")
    return figure


def _numeric_choices(attributes: dict) -> bool:
    choices = attributes.get("choices")
    return bool(choices) and all(isinstance(c, int | float) and c > 0 for c in choices)


def _searched(spaces: dict[str, dict]) -> set[str]:
    return {name for space in spaces.values() for name in space}


def _range_ends(axes, distribution: dict | None, colour: tuple) -> None:
    attributes = (distribution or {}).get("attributes") or {}
    ends = (min(attributes["choices"]), max(attributes["choices"])) if _numeric_choices(attributes) else ()
    for end in ends or (attributes.get("low"), attributes.get("high")):
        if end is not None:
            axes.axvline(end, color=colour, linestyle=":", linewidth=1, alpha=0.7)
