"""What a tuning study found and what it cost: ``python benchmarks/study_summary.py RESULTS_DIR``.

Reads the cell summaries (``studies/*.json``) and the run records of a study
sweep and prints, per cell: trials by state, the pruned trials, the best
parameters and validation score, the finals' test mean ± std over seeds and
the tuning cost. Then the sweep's wall time (first run start to last run end)
against the seconds spent inside training and evaluation, the rest being the
harness's per-run overhead (model and data loading, tokenisation, records).
"""

from __future__ import annotations

import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

from harness.records import load_records


def _cell_line(summary: dict) -> str:
    states = ", ".join(f"{count} {state}" for state, count in summary["states"].items() if count)
    best = summary["best"] or {}
    params = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in (best.get("assignments") or {}).items()}
    tests = [f["test"] for f in summary["finals"] if f["test"] is not None]
    spread = f"{statistics.mean(tests):.3f} ± {statistics.stdev(tests):.3f}" if len(tests) > 1 else "n/a"
    cost = summary["tuning_cost"]
    return (
        f"| {summary['study'].split('#')[0]} | {states} | {summary['pruned_trials']} | {params} | "
        f"{best.get('value', float('nan')):.3f} | {spread} (n={len(tests)}) | "
        f"{cost['train_seconds']:.0f} + {cost['eval_seconds']:.0f} |"
    )


def main(results_dir: str) -> int:
    folder = Path(results_dir)
    summaries = [json.loads(p.read_text()) for p in sorted((folder / "studies").glob("*.json"))]
    if not summaries:
        print(f"error: no study summaries under {folder / 'studies'}", file=sys.stderr)
        return 1
    print(
        "| cell | trials | pruned | best parameters | best val | final test (mean ± std) | tuning cost: train + eval s |"
    )
    print("|---|---|---|---|---:|---:|---:|")
    for summary in summaries:
        print(_cell_line(summary))
    runs = [r for r in load_records(folder) if r.get("finished_at")]
    start = min(datetime.fromisoformat(r["started_at"]) for r in runs)
    end = max(datetime.fromisoformat(r["finished_at"]) for r in runs)
    inside = sum((r["time"].get("train_seconds") or 0) + (r["time"].get("eval_seconds") or 0) for r in runs)
    wall = (end - start).total_seconds()
    print(
        f"\n{len(runs)} runs; wall {wall:.0f} s from first start to last finish; "
        f"{inside:.0f} s inside training and evaluation; overhead {wall - inside:.0f} s "
        f"({(wall - inside) / len(runs):.1f} s per run)"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python benchmarks/study_summary.py RESULTS_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
