"""Evaluation's generation and scoring (harness/objectives/generation.py) on a tiny random Llama.

Batching by length must change nothing but speed: every result is compared
with a plain one-row-at-a-time computation, on prompts of different lengths
so that sorting them really reorders them. Stop strings and EOS must end
generation itself, not only trim its text.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from harness import models
from harness.data.answers import extract_answer
from harness.data.spec import TaskSpec
from harness.objectives import generation
from tasks.generators import generative

MAX_NEW_TOKENS = 12
BATCH = 4


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2's tokenizer and chat template, as the tiny_llama model config loads it."""
    return models.load_tokenizer(compose_config(["model=tiny_llama"]).model)


def tiny_llama(tokenizer, head: str = "causal_lm"):
    """Random weights, drawn wide (initializer_range 0.2) so that different prompts get different greedy
    continuations and near-ties between logits are rare."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        initializer_range=0.2,
        num_labels=1,
    )
    return (LlamaForCausalLM if head == "causal_lm" else LlamaForSequenceClassification)(config).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[str]:
    """12 prompts, 1 to 6 arithmetic steps and short string tasks: several lengths, not in length order."""
    arithmetic = generative.arithmetic(20, 6, 6, seed=1, steps=[1, 2, 3, 4, 5, 6])["test"]["prompt"]
    strings = generative.string_ops(20, 6, 6)["test"]["prompt"]
    chosen = [p for pair in zip(arithmetic, strings, strict=True) for p in pair]
    lengths = generation.token_lengths(tokenizer, [generation.chat_prompt(tokenizer, p) for p in chosen])
    assert len(set(lengths)) >= 6 and lengths != sorted(lengths, reverse=True)
    return chosen


def one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The reference: each prompt alone, no padding, greedy."""
    texts = []
    for prompt in prompts:
        encoded = tokenizer(generation.chat_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts.append(tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))
    return texts


def each_row_alone(score, model, tokenizer, prompts: list[str], completions: list[str]) -> list:
    """The reference for pair scoring: each (prompt, completion) scored by itself, a batch of one."""
    return [score(model, tokenizer, [p], [c], 1)[0] for p, c in zip(prompts, completions, strict=True)]


class ForwardCalls:
    """The sequence length of every forward pass of a model: one per generation step, 1 once the KV cache serves."""

    def __init__(self, model):
        self.lengths: list[int] = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs) -> None:
        self.lengths.append(kwargs["input_ids"].shape[1])


def test_in_length_order_batches_longest_first_and_returns_results_in_input_order():
    seen: list[list[int]] = []

    def score(batch: list[int]) -> list[str]:
        seen.append(batch)
        return [f"row {i}" for i in batch]

    assert generation.in_length_order([1, 5, 3, 5, 2], 2, score) == [f"row {i}" for i in range(5)]
    assert seen == [[1, 3], [2, 4], [0]]  # ties keep their input order
    assert generation.in_length_order([], 2, score) == []
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        generation.in_length_order([1], 0, score)


def test_greedy_generate_in_sorted_batches_equals_one_prompt_at_a_time(tokenizer, prompts):
    model = tiny_llama(tokenizer)
    reference = one_at_a_time(model, tokenizer, prompts, MAX_NEW_TOKENS)
    assert len(set(reference)) == len(prompts)  # a wrong order cannot go unnoticed
    assert generation.greedy_generate(model, tokenizer, prompts, MAX_NEW_TOKENS, BATCH) == reference
    # Exact match agrees too: every other row's reference is what the model says.
    task = OmegaConf.create({"max_new_tokens": MAX_NEW_TOKENS, "answer_pattern": None})
    answers = [extract_answer(r, None) if i % 2 else "no" for i, r in enumerate(reference)]
    score, samples = generation.exact_match(model, tokenizer, {"prompt": prompts, "answer": answers}, task, BATCH)
    assert score == 0.5 and [s["generation"] for s in samples] == reference
    assert [s["correct"] for s in samples] == [bool(i % 2) for i in range(len(prompts))]


def test_completion_logprobs_in_sorted_batches_equal_one_row_at_a_time(tokenizer, prompts):
    model = tiny_llama(tokenizer)
    completions = [" ".join(["seven"] * (1 + i % 5)) for i in range(len(prompts))]
    batched = generation.completion_logprobs(model, tokenizer, prompts, completions, BATCH)
    alone = each_row_alone(generation.completion_logprobs, model, tokenizer, prompts, completions)
    assert [count for _, count in batched] == [count for _, count in alone]
    assert len({count for _, count in alone}) == 5
    torch.testing.assert_close(
        torch.tensor([s for s, _ in batched]), torch.tensor([s for s, _ in alone]), rtol=0, atol=1e-5
    )


def test_rewards_in_sorted_batches_equal_one_row_at_a_time(tokenizer, prompts):
    model = tiny_llama(tokenizer, head="sequence_classification")
    completions = [" ".join(["seven"] * (1 + i % 5)) for i in range(len(prompts))]
    batched = generation.rewards(model, tokenizer, prompts, completions, BATCH)
    alone = each_row_alone(generation.rewards, model, tokenizer, prompts, completions)
    assert len(set(alone)) == len(prompts)
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(alone), rtol=0, atol=1e-5)


def test_a_stop_string_ends_generation_and_is_cut_from_the_text(tokenizer, prompts):
    model = tiny_llama(tokenizer)
    free = generation.greedy_generate(model, tokenizer, prompts, MAX_NEW_TOKENS, BATCH)
    row = max(range(len(prompts)), key=lambda i: len(free[i]))
    words = free[row].split()
    stop = words[len(words) // 2][1:4]  # inside a word halfway through: it need not start or end a token
    task = OmegaConf.create({"max_new_tokens": MAX_NEW_TOKENS, "answer_pattern": None, "stop_strings": [stop]})
    rows = {"prompt": prompts, "answer": [""] * len(prompts)}
    _, samples = generation.exact_match(model, tokenizer, rows, task, BATCH)
    assert [s["generation"] for s in samples] == [text.split(stop)[0] for text in free]
    assert samples[row]["generation"] == free[row][: free[row].index(stop)]
    calls = ForwardCalls(model)  # alone, the row stops where its stop string ends: long before max_new_tokens
    assert generation.greedy_generate(model, tokenizer, [prompts[row]], MAX_NEW_TOKENS, 1, [stop]) == [
        samples[row]["generation"]
    ]
    assert 1 < len(calls.lengths) < MAX_NEW_TOKENS - 2 and set(calls.lengths[1:]) == {1}  # the KV cache serves


def test_a_batch_ends_when_every_row_has_emitted_eos(tokenizer, prompts):
    """A model that always says EOS: one forward pass per batch (the prompt's), then the batch is done."""
    model = tiny_llama(tokenizer)
    model.lm_head = torch.nn.Linear(64, len(tokenizer), bias=True)
    torch.nn.init.zeros_(model.lm_head.weight)
    with torch.no_grad():
        model.lm_head.bias.zero_()[tokenizer.eos_token_id] = 1.0
    calls = ForwardCalls(model)
    assert generation.greedy_generate(model, tokenizer, prompts, MAX_NEW_TOKENS, BATCH) == [""] * len(prompts)
    assert len(calls.lengths) == len(prompts) // BATCH


def test_a_task_states_its_stop_strings_and_none_is_the_default():
    task = compose_config(["task=arithmetic", "+task.stop_strings=['###', Question]"]).task
    TaskSpec.from_config(task).check()
    assert generation.stop_strings_of(task) == ["###", "Question"]
    assert generation.stop_strings_of(compose_config(["task=arithmetic"]).task) is None
    assert generation.cut_at_stop("12\n\nThe answer", ["###", "\n\n"]) == "12"
    assert generation.cut_at_stop("12", None) == "12"


def test_evaluation_generates_with_the_tasks_stop_strings_and_its_own_batch_size(monkeypatch):
    """``budget.eval_batch_size`` reaches generation through score_held_out; without it, the trainer's applies."""
    from types import SimpleNamespace

    from datasets import Dataset

    calls = []

    def spy(model, tokenizer, prompts, max_new_tokens, batch_size, stop_strings=None):
        calls.append((max_new_tokens, batch_size, stop_strings))
        return ["4"] * len(prompts)

    class Evaluator(generation.GenerationEvalMixin):
        args, processing_class, model = SimpleNamespace(per_device_eval_batch_size=8), None, None

    monkeypatch.setattr(generation, "greedy_generate", spy)
    task = compose_config(["task=arithmetic", "+task.stop_strings=[Question]"]).task
    rows = Dataset.from_dict({"prompt": ["a", "b"], "answer": ["4", "5"]})
    evaluator = Evaluator()
    evaluator.score_held_out({"eval": rows}, task, 3)
    assert evaluator._generation_metrics("eval") == {"eval_exact_match": 0.5}
    evaluator.score_held_out({"eval": rows}, task)
    evaluator._generation_metrics("eval")
    assert calls == [(16, 3, ["Question"]), (16, 8, ["Question"])]
