"""Evaluation of generative models, shared by every generative objective.

Two measurements, the same whichever objective trained the model:

* **exact match** of the answer extracted (``task.answer_pattern``) from a
  greedy generation (ended by EOS, ``task.max_new_tokens`` or one of
  ``task.stop_strings``), against the reference answer; every prompt,
  generation and score is kept for the run's sample file;
* **preference accuracy** on held-out pairs: how often the model scores the
  chosen completion above the rejected one (a policy by the log-likelihood
  of the completion given the prompt, a reward model by its reward), with
  the mean margin.

:class:`GenerationEvalMixin` adds them to every evaluation a Trainer runs, so
they appear in the learning curve (step 0 is the untrained model) and reach
the study's pruner, and their time is charged to evaluation, not training.
Rows are generated and scored in batches of similar length, longest first
(:func:`in_length_order`), so little of a batch is padding; results come back
in the rows' order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig

from harness.compat import merge_into_evaluation_log, use_adapter
from harness.data.answers import extract_answer
from harness.data.spec import DEFAULT_MAX_NEW_TOKENS
from harness.metrics import load_metric
from harness.objectives.base import HELD_OUT_SPLITS

T = TypeVar("T")


def max_new_tokens(task: DictConfig) -> int:
    """How long a generation may grow on this task, the same for evaluation and for every objective's rollouts."""
    return task.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)


@contextmanager
def scoring(model):
    """Eval mode (no dropout) while scoring or generating, then back to the mode the model was in."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


@contextmanager
def padding_side(tokenizer, side: str):
    """Pad on ``side`` for the duration (left for generation), then as before."""
    before, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = before


def chat_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the model sees it: through its chat template when it has one, else as is."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def conversation_text(tokenizer, prompt: str, completion: str) -> str:
    """Prompt and completion as one text, the way TRL's trainers format a prompt-completion pair."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return prompt + completion + (tokenizer.eos_token or "")


def as_conversation(prompt: str, completion: str | None = None) -> dict[str, Any]:
    """TRL's conversational prompt-completion form, so the trainer applies the chat template itself."""
    row = {"prompt": [{"role": "user", "content": prompt}]}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}]
    return row


def stop_strings_of(task: DictConfig) -> list[str] | None:
    """The strings that end a generation besides EOS (``task.stop_strings``), None when the task sets none."""
    value = task.get("stop_strings")
    return [str(s) for s in value] if value else None


def cut_at_stop(text: str, stop_strings: Sequence[str] | None) -> str:
    """The text before the first stop string; the stop string is a delimiter, not part of the answer, so it is
    left out.

    ``generate`` ends a row after the token that completes a stop string, and that token may carry text past it
    (``".\\n\\n"`` for the stop string ``"\\n"``): the decoded text is cut here, the same way for every row.
    """
    cuts = [text.find(s) for s in stop_strings or ()]
    return text[: min((c for c in cuts if c >= 0), default=len(text))]


def in_length_order(lengths: Sequence[int], batch_size: int, score: Callable[[list[int]], list[T]]) -> list[T]:
    """``score`` of batches of row indices, longest rows first, its results back in the rows' order.

    Rows of similar length share a batch, so little of each batch is padding; the longest come first, so a
    batch size too large for memory fails at once, not at the end of an evaluation.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer (got {batch_size!r})")
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)  # stable: ties keep their order
    results: list[Any] = [None] * len(lengths)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for index, value in zip(batch, score(batch), strict=True):
            results[index] = value
    return results


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def greedy_settings(tokenizer, max_new_tokens: int, stop_strings: Sequence[str] | None) -> dict[str, Any]:
    """``generate`` arguments: greedy, KV cache on, ending a row at EOS or a stop string (and a batch when
    every row has ended), never running past ``max_new_tokens``."""
    settings = dict(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if stop_strings:
        settings.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    return settings


@torch.no_grad()
def greedy_generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str] | None = None,
) -> list[str]:
    """Greedy completions in the prompts' order, special tokens stripped, each cut before its first stop string.

    Prompts are generated in left-padded batches of similar length (:func:`in_length_order`): the same
    greedy choices as one prompt at a time, up to the float rounding that padding shapes can change.
    """
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    settings = greedy_settings(tokenizer, max_new_tokens, stop_strings)
    with scoring(model) as device, padding_side(tokenizer, "left"):

        def generate(batch: list[int]) -> list[str]:
            encoded = tokenizer(
                [texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            output = model.generate(**encoded, **settings)
            return tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)

        completions = in_length_order(token_lengths(tokenizer, texts), batch_size, generate)
    return [cut_at_stop(c, stop_strings) for c in completions]


def exact_match(model, tokenizer, rows: dict[str, list], task: DictConfig, batch_size: int) -> tuple[float, list[dict]]:
    """Exact match over the rows' prompts, and one sample per prompt (prompt, generation, answer, score)."""
    generations = greedy_generate(
        model, tokenizer, rows["prompt"], max_new_tokens(task), batch_size, stop_strings_of(task)
    )
    predicted = [extract_answer(g, task.get("answer_pattern")) for g in generations]
    references = [str(a) for a in rows["answer"]]
    score = load_metric("exact_match").compute(predictions=predicted, references=references)["exact_match"]
    samples = [
        {"prompt": p, "generation": g, "extracted": e, "reference": r, "correct": e.strip() == r.strip()}
        for p, g, e, r in zip(rows["prompt"], generations, predicted, references, strict=True)
    ]
    return score, samples


@torch.no_grad()
def completion_logprobs(
    model, tokenizer, prompts: list[str], completions: list[str], batch_size: int
) -> list[tuple[float, int]]:
    """(sum of the log-probabilities, number) of each completion's tokens given its (chat-formatted) prompt.

    The completion's tokens are those the formatted conversation has beyond the
    formatted prompt (end-of-turn marker included), as in TRL's completion masks.
    Batches (of similar length, :func:`in_length_order`) are padded here, on the
    right, so the tokenizer's padding side does not matter.
    """
    prompt_ids = [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    full_ids = [
        tokenizer(conversation_text(tokenizer, p, c), add_special_tokens=False)["input_ids"]
        for p, c in zip(prompts, completions, strict=True)
    ]
    with scoring(model) as device:

        def score(batch: list[int]) -> list[tuple[float, int]]:
            return _completion_logprobs(
                model, device, tokenizer.pad_token_id, [prompt_ids[i] for i in batch], [full_ids[i] for i in batch]
            )

        return in_length_order([len(f) for f in full_ids], batch_size, score)


def _completion_logprobs(
    model, device, pad_token_id: int, prompt_ids: list[list[int]], full_ids: list[list[int]]
) -> list[tuple[float, int]]:
    width = max(map(len, full_ids))
    ids = torch.full((len(full_ids), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    scored = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, f) in enumerate(zip(prompt_ids, full_ids, strict=True)):
        ids[i, : len(f)] = torch.tensor(f)
        attention[i, : len(f)] = 1
        scored[i, len(p) : len(f)] = True
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
    logits = logits[:, -ids.shape[1] :]  # prompt tuning prepends virtual tokens' logits: drop them
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
    mask = scored[:, 1:].to(device)
    sums, counts = (logprobs * mask).sum(dim=1).tolist(), mask.sum(dim=1).tolist()
    return list(zip(sums, counts, strict=True))


@torch.no_grad()
def rewards(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int) -> list[float]:
    """A reward model's score of each (prompt, completion), formatted as in training (chat template), in
    batches of similar length (:func:`in_length_order`)."""
    texts = [conversation_text(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    with scoring(model) as device:

        def score(batch: list[int]) -> list[float]:
            encoded = tokenizer(
                [texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            return model(**encoded).logits[:, 0].float().tolist()

        return in_length_order(token_lengths(tokenizer, texts), batch_size, score)


# What a model scores a preference pair by, named for what it is (``<quantity>_accuracy`` and ``<quantity>_margin``):
#   mean_token_logprob  a policy's mean log-probability per completion token (length-normalised, so a shorter
#                       answer is not favoured for being short); every generative run
#   implicit_reward     DPO's reward, beta * (log pi - log pi_ref) summed over the completion; DPO runs
#   reward              a reward model's scalar output; reward-model runs
PREFERENCE_QUANTITIES = ("mean_token_logprob", "implicit_reward", "reward")


def pair_metrics(quantity: str, chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """Accuracy (chosen scored above rejected; a tie counts one half) and mean margin of one quantity."""
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    scores = load_metric("preference_accuracy").compute(predictions=margins, references=[1] * len(margins))
    return {f"{quantity}_accuracy": scores["accuracy"], f"{quantity}_margin": scores["margin"]}


def mean_per_token(stats: list[tuple[float, int]]) -> list[float]:
    return [total / count if count else float("nan") for total, count in stats]


class GenerationEvalMixin:
    """Trainer mixin: every ``evaluate(metric_key_prefix=p)`` also scores ``self.generation_sets[p]``.

    Set ``generation_sets`` (prefix -> rows as a dict of lists), ``generation_task``
    (the task config) and ``generation_batch_size`` (None: the trainer's evaluation
    batch size) through :meth:`score_held_out`, ``scores_by_reward`` (a reward model:
    pairs are scored by its output, and it does not generate) and
    ``implicit_reward_beta`` (DPO: its implicit reward is scored too, against the
    frozen reference). The latest samples of each prefix are kept in
    ``generation_samples``.
    """

    generation_sets: dict[str, dict[str, list]] = {}
    generation_task: DictConfig | None = None
    generation_batch_size: int | None = None
    scores_by_reward = False
    implicit_reward_beta: float | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generation_samples: dict[str, list[dict]] = {}
        self._pending: dict[str, float] | None = None
        self._reference_logprobs: dict[str, tuple[list, list]] = {}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        started = time.perf_counter()
        self._pending = self._generation_metrics(metric_key_prefix)
        self._pending_seconds = time.perf_counter() - started
        try:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._pending = None

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._pending is not None:  # inside evaluate(): its log gets the generation metrics and their time
            merge_into_evaluation_log(logs, self._pending, self._pending_seconds)
        super().log(logs, *args, **kwargs)

    def score_held_out(self, held_out: dict[str, Any], task: DictConfig, batch_size: int | None = None) -> None:
        """Score these rows (by evaluation prefix) at every evaluation, for this task, ``batch_size`` rows at a
        time (``budget.eval_batch_size``: generation is memory-light next to training, so it may take more)."""
        self.generation_sets = {prefix: split.to_dict() for prefix, split in held_out.items()}
        self.generation_task = task
        self.generation_batch_size = int(batch_size) if batch_size else None

    @property
    def scoring_batch_size(self) -> int:
        return self.generation_batch_size or self.args.per_device_eval_batch_size

    def samples_by_split(self) -> list[dict[str, Any]]:
        """The last evaluation's generations of each split, for the run's sample file."""
        return [
            {"split": HELD_OUT_SPLITS[prefix], **sample}
            for prefix in HELD_OUT_SPLITS
            for sample in self.generation_samples.get(prefix, [])
        ]

    def generation_model(self):
        """The model that generates and is scored (PPO's policy, not its value model)."""
        return self.model

    def _generation_metrics(self, prefix: str) -> dict[str, float]:
        rows = self.generation_sets.get(prefix)
        if not rows:
            return {}
        model, tokenizer, batch = self.generation_model(), self.processing_class, self.scoring_batch_size
        metrics: dict[str, float] = {}
        if "chosen" in rows:
            metrics.update({f"{prefix}_{k}": v for k, v in self._preference_metrics(prefix, rows).items()})
        if not self.scores_by_reward and rows.get("answer"):
            score, samples = exact_match(model, tokenizer, rows, self.generation_task, batch)
            metrics[f"{prefix}_exact_match"] = score
            self.generation_samples[prefix] = samples
        return metrics

    def _preference_metrics(self, prefix: str, rows: dict[str, list]) -> dict[str, float]:
        """Held-out pairs scored by what this model scores them by (see ``PREFERENCE_QUANTITIES``)."""
        model, tokenizer, batch = self.generation_model(), self.processing_class, self.scoring_batch_size
        if self.scores_by_reward:
            chosen, rejected = (
                rewards(model, tokenizer, rows["prompt"], rows[c], batch) for c in ("chosen", "rejected")
            )
            return pair_metrics("reward", chosen, rejected)
        chosen, rejected = (
            completion_logprobs(model, tokenizer, rows["prompt"], rows[c], batch) for c in ("chosen", "rejected")
        )
        metrics = pair_metrics("mean_token_logprob", mean_per_token(chosen), mean_per_token(rejected))
        if self.implicit_reward_beta is not None:
            ref_chosen, ref_rejected = self._reference_scores(prefix, rows)
            beta = self.implicit_reward_beta
            implicit = [
                [beta * (policy - reference) for (policy, _), (reference, _) in zip(side, ref_side, strict=True)]
                for side, ref_side in ((chosen, ref_chosen), (rejected, ref_rejected))
            ]
            metrics.update(pair_metrics("implicit_reward", *implicit))
        return metrics

    def _reference_scores(self, prefix: str, rows: dict[str, list]) -> tuple[list, list]:
        """The frozen reference's summed log-probabilities of the pairs, computed once per split (it never changes)."""
        if prefix not in self._reference_logprobs:
            tokenizer, batch = self.processing_class, self.scoring_batch_size
            with self.reference_model() as reference:
                self._reference_logprobs[prefix] = tuple(
                    completion_logprobs(reference, tokenizer, rows["prompt"], rows[c], batch)
                    for c in ("chosen", "rejected")
                )
        return self._reference_logprobs[prefix]

    @contextmanager
    def reference_model(self):
        """DPO's reference: its frozen copy (``ref_model``), or the frozen "ref" adapter TRL adds beside a
        PEFT adapter (the adapters disabled where there is none)."""
        reference = getattr(self, "ref_model", None)
        if reference is not None:
            yield reference
            return
        model = self.generation_model()
        with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
            yield model
