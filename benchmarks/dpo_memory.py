"""DPO's training peak with micro-batches against whole batches (issue #13: memory-bounded preference training).

Two runs of the same DPO experiment, one after the other, each in its own
``harness-run`` process (so neither's memory shows in the other's) and its own
results folder (``budget.micro_batch_size`` is not part of a run's identity, so
they would share a run_id):

* **micro**: ``budget.micro_batch_size=<micro>`` and, unless ``--no-precompute``,
  ``objective.precompute_ref_log_probs=true``;
* **whole**: the effective batch in one forward and backward pass.

Both train on the same examples in the same order, with the same optimizer steps.
Printed per run: the training peak above the pre-training baseline (the record's
``memory.train_peak_above_baseline_bytes``: the process RSS high-water mark on a
CPU, the CUDA allocator's peak on a GPU), the absolute peak, the training
seconds, the reference precomputation's seconds (training compute spent before
the training window) and the process's wall time.

The training split is cut to ``--train-examples`` so that the precomputed
reference pass (over the whole split) scores what the budget trains on and no more.

Usage::

    .venv/bin/python benchmarks/dpo_memory.py                       # SmolLM2-135M, batch 32, micro 4, 2 steps
    .venv/bin/python benchmarks/dpo_memory.py --model tiny_llama --batch 8 --micro 2 \\
        --train-examples 16 --eval-examples 2 task.max_new_tokens=2  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--task", default="arithmetic_1step_pref")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--batch", type=int, default=32, help="effective batch: examples per optimizer step")
    parser.add_argument("--micro", type=int, default=4, help="examples per forward and backward pass")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps")
    parser.add_argument("--train-examples", type=int, default=None, help="training pairs (default: batch × steps)")
    parser.add_argument("--eval-examples", type=int, default=8, help="validation and test pairs scored")
    parser.add_argument("--no-precompute", action="store_true", help="score the reference per step in the micro run")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="further harness-run overrides, for both runs")
    return parser.parse_args(argv)


def shared_overrides(args: argparse.Namespace) -> list[str]:
    """The experiment both runs share: model, task, method, effective batch, steps and data."""
    train = args.train_examples or args.batch * args.steps
    return [
        f"model={args.model}",
        f"task={args.task}",
        "objective=dpo",
        f"method={args.method}",
        "budget=tiny",
        f"budget.batch_size={args.batch}",
        f"budget.max_steps={args.steps}",
        f"budget.eval_steps={args.steps}",
        f"budget.max_eval_samples={args.eval_examples}",
        f"task.generator.n_train={train}",
        f"task.generator.n_validation={args.eval_examples}",
        f"task.generator.n_test={args.eval_examples}",
        *args.overrides,
    ]


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    micro = [f"budget.micro_batch_size={args.micro}"]
    if not args.no_precompute:
        micro.append("objective.precompute_ref_log_probs=true")
    return {"micro": micro, "whole": []}


def run(overrides: list[str], results_dir: Path) -> tuple[dict, float]:
    """One harness-run in its own process; its record and the process's wall seconds."""
    command = [sys.executable, "-m", "harness.cli", *overrides, f"results_dir={results_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    records = sorted((results_dir / "runs").glob("????????????????.json")) if (results_dir / "runs").is_dir() else []
    if not records:
        raise SystemExit(f"harness-run wrote no record (exit {done.returncode}):\n{done.stderr[-3000:]}")
    record = json.loads(records[0].read_text())
    if record["status"] != "success":
        raise SystemExit(f"the run failed: {record['error']}")
    return record, wall


def row(name: str, record: dict, wall: float) -> str:
    memory, compute = record["memory"], record["compute"]
    precompute = compute.get("reference_precompute_seconds")
    return (
        f"| {name} | {memory['micro_batch_size']} | {'yes' if precompute is not None else 'no'} | "
        f"{memory['train_peak_above_baseline_bytes'] / MIB:,.0f} | {memory['train_peak_bytes'] / MIB:,.0f} | "
        f"{memory['baseline_bytes'] / MIB:,.0f} | {record['time']['train_seconds']:.1f} | "
        f"{'–' if precompute is None else f'{precompute:.1f}'} | {wall:.1f} | {compute['samples']} |"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.batch % args.micro:
        raise SystemExit(f"--micro {args.micro} must divide --batch {args.batch}")
    out = args.out or Path(tempfile.mkdtemp(prefix="dpo-memory-"))
    print(
        "| run | micro-batch | reference precomputed | train peak above load (MiB) | train peak (MiB) | "
        "baseline (MiB) | train s | precompute s | process wall s | pairs trained |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    source = None
    for name, extra in variants(args).items():
        record, wall = run([*shared_overrides(args), *extra], out / name)
        source = record["memory"]["source"]
        print(row(name, record, wall), flush=True)
    print(f"\nrecords under {out}; memory source {source}; effective batch {args.batch}, {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
