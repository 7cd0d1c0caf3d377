"""Time greedy evaluation generation: the previous implementation against the current one, on SmolLM2-135M.

* **previous**: batches in prompt order, each run to EOS or ``max_new_tokens``
  (``previous_greedy_generate``, the code before issue #13, copied here);
* **current**: ``harness.objectives.generation.greedy_generate``, batches of
  prompts sorted by length (less padding), ending at EOS or one of the task's
  stop strings.

Both run on the same prompts (the first ``--prompts`` of an embedded exact-match
task's split, loaded by the harness's own data stage) with the same batch size,
in the order previous, current, previous, current, so that neither profits
alone from a warm cache or a quiet moment. The exact-match scores must be equal
(exit status 1 otherwise): sorting changes which prompts share a batch, which
may change float rounding, but not the greedy answers.

Usage: ``.venv/bin/python benchmarks/generation_speed.py [--prompts 200] [--batch-size 32] [--task arithmetic]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import models  # noqa: E402
from harness.data import load_task  # noqa: E402
from harness.data.answers import extract_answer  # noqa: E402
from harness.metrics import load_metric  # noqa: E402
from harness.objectives import generation  # noqa: E402
from harness.objectives.generation import chat_prompt, padding_side, scoring  # noqa: E402

Generate = Callable[[list[str]], list[str]]


@torch.no_grad()
def previous_greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions, left-padded batches; special tokens stripped."""
    completions = []
    with scoring(model) as device, padding_side(tokenizer, "left"):
        for start in range(0, len(prompts), batch_size):
            batch = [chat_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return completions


def load(task_name: str, split: str, prompts: int):
    """The task's config and the first rows of its split, SmolLM2-135M and its tokenizer, as a run loads them."""
    from hydra import compose, initialize_config_dir

    from harness.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=[f"task={task_name}", "model=smollm2_135m"])
    rows = load_task(cfg.task)[split]
    rows = rows.select(range(min(prompts, len(rows)))).to_dict()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = models.load_causal_lm(cfg.model, None, cfg.seed).to(device)
    return cfg.task, rows, model, models.load_tokenizer(cfg.model)


def exact_match_of(generations: list[str], answers: list, pattern: str | None) -> float:
    predicted = [extract_answer(g, pattern) for g in generations]
    references = [str(a) for a in answers]
    return load_metric("exact_match").compute(predictions=predicted, references=references)["exact_match"]


def timed(name: str, generate: Generate, rows: dict[str, list], pattern: str | None) -> tuple[float, list[str]]:
    started = time.perf_counter()
    generations = generate(rows["prompt"])
    seconds = time.perf_counter() - started
    score = exact_match_of(generations, rows["answer"], pattern)
    print(f"{name:>8}: {seconds:7.2f} s  exact match {score:.4f}", flush=True)
    return score, generations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--task", default="arithmetic", help="an embedded exact-match task (arithmetic, string_ops)")
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    args = parser.parse_args(argv)
    task, rows, model, tokenizer = load(args.task, args.split, args.prompts)
    new_tokens, stops, pattern = generation.max_new_tokens(task), generation.stop_strings_of(task), task.answer_pattern
    print(
        f"task {args.task} ({args.split}, {len(rows['prompt'])} prompts), max_new_tokens {new_tokens}, "
        f"stop strings {stops}, batch size {args.batch_size}, device {next(model.parameters()).device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    runs: dict[str, Generate] = {
        "previous": lambda p: previous_greedy_generate(model, tokenizer, p, new_tokens, args.batch_size),
        "current": lambda p: generation.greedy_generate(model, tokenizer, p, new_tokens, args.batch_size, stops),
    }
    runs["current"](rows["prompt"][:2])  # warm-up: first-call allocations count against neither
    results = [(name, *timed(name, runs[name], rows, pattern)) for _ in range(2) for name in runs]
    scores = {name: score for name, score, _ in results}
    texts = {name: generations for name, _, generations in results}
    differing = sum(a != b for a, b in zip(texts["previous"], texts["current"], strict=True))
    print(f"generations that differ between previous and current: {differing} of {len(rows['prompt'])}")
    if len({score for _, score, _ in results}) != 1:
        print(f"exact-match scores differ: {scores}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
