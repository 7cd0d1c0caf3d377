"""Cross-check a run record's figures against measurements the harness does not make itself.

For one run per method, in its own process:

* **peak memory**: the record's largest absolute peak (training or evaluation
  window) against ``/usr/bin/time -v``'s maximum resident set size of the
  same process. GNU time reads the kernel's ``ru_maxrss`` for the whole
  process life (imports, model load, data, training, evaluation, saving), so
  it bounds the record's windows from above; the gap is what happened
  outside them.
* **trainable parameters**: the record's ``params.trainable`` against PEFT's
  ``get_nb_trainable_parameters`` on the same model wrapped the same way,
  and the record's ``params.total`` against PEFT's total, which also counts
  the frozen original of the head that ``modules_to_save`` copies.

Usage: ``.venv/bin/python benchmarks/memory_crosscheck.py [--methods full,lora,...] [--steps 60] [--out DIR]``
Prints a Markdown table (the figures in benchmarks/README.md come from it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BASE = ["model=minilm", "task=toy_sentiment", "budget=tiny", "seed=0"]
MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def run_under_time(method: str, steps: int, results_dir: Path) -> tuple[dict, int]:
    """One harness-run in its own process under GNU time; its record and time's max RSS in bytes."""
    command = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "harness.cli",
        *BASE,
        f"method={method}",
        f"budget.max_steps={steps}",
        f"results_dir={results_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    (record_file,) = [
        p for p in (results_dir / "runs").glob("????????????????.json") if json.loads(p.read_text())["method"] == method
    ]
    return json.loads(record_file.read_text()), int(MAX_RSS.search(done.stderr).group(1)) * 1024


def peft_counts(method: str) -> tuple[int, int] | None:
    """PEFT's (trainable, total) for the model the run wraps; None for the harness's own methods."""
    from hydra import compose, initialize_config_dir

    from harness import methods, models
    from harness.cli import CONFIG_DIR
    from harness.run import prepare

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=[*BASE, f"method={method}", "results_dir=/tmp/unused"])
    prepared = prepare(cfg)
    model = models.load_classifier(cfg.model, len(cfg.task.label_names), models.quantization_of(cfg), cfg.seed)
    model = methods.apply_method(model, prepared.method_object, prepared.context)
    return tuple(model.get_nb_trainable_parameters()) if methods.is_peft_model(model) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="full,lora,ia3,head,qlora,adalora")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="memory-crosscheck-"))
    mib = 2**20
    print(
        "| method | record train peak (MiB) | record eval peak (MiB) | time -v max RSS (MiB) | record max / time | "
        "above load, train (MiB) | weights (MiB) | trainable: record | trainable: PEFT | total: record | total: PEFT |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        record, max_rss = run_under_time(method, args.steps, out)
        memory, params = record["memory"], record["params"]
        peak = max(memory["train_peak_bytes"], memory["eval_peak_bytes"])
        counts = peft_counts(method)
        peft_trainable, peft_total = counts if counts else ("–", "–")
        print(
            f"| {method} | {memory['train_peak_bytes'] / mib:,.0f} | {memory['eval_peak_bytes'] / mib:,.0f} | "
            f"{max_rss / mib:,.0f} | {peak / max_rss:.3f} | {memory['train_peak_above_baseline_bytes'] / mib:,.0f} | "
            f"{memory['weights_bytes'] / mib:,.1f} | {params['trainable']:,} | "
            f"{peft_trainable if isinstance(peft_trainable, str) else f'{peft_trainable:,}'} | {params['total']:,} | "
            f"{peft_total if isinstance(peft_total, str) else f'{peft_total:,}'} |",
            flush=True,
        )
    print(f"\nrecords in {out}; memory source {memory['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
