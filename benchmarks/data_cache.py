"""Data preparation of a sweep's first run against its later runs: what the data cache saves.

Each measurement is a fresh Python process (as a sweep's worker or a new
``harness-run`` is; the first process also repeats the preparation three
times, as the jobs of an in-process sweep do), timing the data stage a run goes through before any
weights load: load the task's splits and fingerprint them
(``harness.data.load_fingerprinted``), then tokenize them
(``harness.data.tokenize``). The first process starts from an empty cache;
the later ones find it filled. Imports and the tokenizer's own loading are
timed apart (they are not data preparation, and no cache changes them).

    python benchmarks/data_cache.py                        # toy_sentiment, and SST-2 when ../shared/data has it
    python benchmarks/data_cache.py --tasks sst2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CHILD = """
import json, sys, time
from hydra import compose, initialize_config_dir
from harness import data, models
from harness.budget import sequence_length
from harness.cli import CONFIG_DIR
with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
    cfg = compose(config_name="config", overrides=sys.argv[1:])
tokenizer = models.load_tokenizer(cfg.model)
def prepare():
    start = time.perf_counter()
    splits, sha = data.load_fingerprinted(cfg.task)
    loaded = time.perf_counter()
    tokenized = data.tokenize(splits, tokenizer, sequence_length(cfg), sha)
    done = time.perf_counter()
    return {"load_s": loaded - start, "tokenize_s": done - loaded, "total_s": done - start,
            "rows": {k: len(v) for k, v in tokenized.items()}}
first = prepare()
print(json.dumps({**first, "same_process_s": [prepare()["total_s"] for _ in range(3)]}))
"""


def prepare_once(overrides: list[str], cache: str) -> dict:
    env = {**os.environ, "FT_HARNESS_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *overrides], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(task: str, repeats: int) -> None:
    overrides = [f"task={task}", "model=minilm", "budget=tiny"]
    if task in ("sst2", "mrpc", "rte", "cola"):
        overrides.append(f"data_root={SHARED_DATA}")
    with tempfile.TemporaryDirectory() as cache:
        first = prepare_once(overrides, cache)
        later = [prepare_once(overrides, cache) for _ in range(repeats)]
    later_total = statistics.median(run["total_s"] for run in later)
    each = ", ".join(f"{run['load_s']:.3f}+{run['tokenize_s']:.3f}" for run in later)
    print(
        f"{task}: rows {first['rows']}\n"
        f"  first run:  load+fingerprint {first['load_s']:.3f} s, tokenize {first['tokenize_s']:.3f} s, "
        f"total {first['total_s']:.3f} s\n"
        f"  later runs (median of {repeats}): total {later_total:.3f} s "
        f"({each})\n"
        f"  later / first: {later_total / first['total_s']:.1%} (target <= 5%)\n"
        f"  later runs in the first run's process (an in-process sweep): "
        f"{', '.join(f'{s:.3f}' for s in first['same_process_s'])} s, "
        f"{statistics.median(first['same_process_s']) / first['total_s']:.1%} of the first"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ["toy_sentiment", *(["sst2"] if (SHARED_DATA / "sst2").is_dir() else [])]
    parser.add_argument("--tasks", nargs="+", default=default)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for task in args.tasks:
        measure(task, args.repeats)


if __name__ == "__main__":
    main()
