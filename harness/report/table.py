"""Flatten run records into one pandas table, and print it for a results folder.

``python -m harness.report.table RESULTS_DIR`` prints one row per run: the
quick look that ends ``make demo``. Reports are pure functions of records.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from harness.records import load_records

COLUMNS = [
    "task",
    "budget",
    "method",
    "seed",
    "role",
    "trial",
    "lr",
    "status",
    "metric",
    "validation",
    "test",
    "trainable",
    "trainable_%",
    "peak_mem_mib",
    "train_s",
    "tokens_per_s",
    "trained_kib",
]


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per record; failed runs keep their identity and error."""
    rows = []
    for r in records:
        primary, params = r.get("primary_metric") or {}, r.get("params") or {}
        memory, time_ = r.get("memory") or {}, r.get("time") or {}
        rows.append(
            {
                "run_id": r.get("run_id"),
                "task": r.get("task"),
                "budget": r.get("budget"),
                "method": r.get("method"),
                "seed": r.get("seed"),
                "role": r.get("role", "run"),
                "trial": (r.get("tuning") or {}).get("trial"),
                "lr": (r.get("config") or {}).get("method", {}).get("lr"),
                "status": r.get("status"),
                "metric": primary.get("name"),
                "validation": primary.get("validation"),
                "test": primary.get("test"),
                "trainable": params.get("trainable"),
                "trainable_%": params.get("trainable_percent"),
                "peak_mem_mib": (memory.get("peak_above_baseline_bytes") or 0) / 2**20 if memory else None,
                "train_s": time_.get("train_seconds"),
                "tokens_per_s": time_.get("train_tokens_per_second"),
                "trained_kib": (r.get("trained_bytes") or 0) / 1024 if r.get("trained_bytes") else None,
                "error": r.get("error"),
            }
        )
    return pd.DataFrame(rows, columns=["run_id", *COLUMNS, "error"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m harness.report.table RESULTS_DIR", file=sys.stderr)
        return 2
    frame = records_frame(load_records(Path(argv[0])))
    if frame.empty:
        print(f"error: no run records under {Path(argv[0]) / 'runs'}", file=sys.stderr)
        return 1
    frame = frame.sort_values(["task", "budget", "method", "role", "trial", "seed"], na_position="last")
    shown = frame[COLUMNS].copy()
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = frame[frame.status == "failed"]
    for _, row in failed.iterrows():
        print(f"FAILED {row.method} seed {row.seed}: {row.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
