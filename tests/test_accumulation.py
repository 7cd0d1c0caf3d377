"""budget.micro_batch_size: gradient accumulation bounds the examples per forward pass and changes nothing else.

Each objective trains twice from the same seed, once on whole batches and once
on micro-batches: the loss curve, the examples, the tokens and the data order
must agree, while a probe sees the trainer accumulate and every forward pass
that builds a graph hold at most a micro-batch.
"""

from __future__ import annotations

import pytest
import torch
from conftest import GENERAL_TEXT, SETTLED, TINY, compose_config
from torch import nn
from transformers import TrainerCallback

from harness import records
from harness.config import ConfigError
from harness.objectives.base import example_tokens
from harness.run import execute, prepare

# The tiny BERT without dropout, so that two runs differ only by how their batches were cut.
TINY_CLS = [
    *TINY,
    "budget.max_steps=3",
    "method=full",
    "method.lr=1e-3",
    "+model.config_overrides.hidden_dropout_prob=0.0",
    "+model.config_overrides.attention_probs_dropout_prob=0.0",
]
# The tiny random Llama, two steps of four examples, the cheapest evaluations that still run.
TINY_LM = [
    *GENERAL_TEXT,
    "model=tiny_llama",
    "budget=tiny",
    "budget.max_steps=2",
    "budget.eval_steps=1",
    "budget.batch_size=4",
    "task.max_seq_length=128",
    "budget.max_eval_samples=2",
    "task.max_new_tokens=2",
    "task.generator.n_train=16",
    "task.generator.n_validation=2",
    "task.generator.n_test=2",
]
# Differences measured on CPU fp32 were below 2e-7 (float summation order); a broken accumulation is off by far more.
LOSS_TOLERANCE = 1e-5


class PassProbe(TrainerCallback):
    """What the trainer was told (micro-batch, accumulation steps), and the rows of every forward pass that
    builds a graph (training passes; evaluation, generation and reference passes run without one)."""

    def __init__(self):
        self.arguments: tuple[int, int] | None = None
        self.rows: set[int] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.arguments = (args.per_device_train_batch_size, args.gradient_accumulation_steps)
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.register_forward_pre_hook(self._note)

    def _note(self, module, inputs) -> None:
        if torch.is_grad_enabled():
            self.rows.add(int(inputs[0].shape[0]))


def _train(folder, *overrides: str) -> tuple[dict, PassProbe]:
    """One run in its own results folder (micro_batch_size is not part of the run_id, so runs would collide)."""
    probe = PassProbe()
    record = execute(prepare(compose_config([f"results_dir={folder}", *overrides])), callbacks=[probe])
    assert record["status"] == "success", record.get("error")
    return record, probe


def _losses(record: dict) -> list[tuple[int, float]]:
    return [(point["step"], point["loss"]) for point in record["learning_curve"] if "loss" in point]


def _assert_same_training(whole: dict, cut: dict) -> None:
    """Equal loss curves (within float summation order), and the same examples, tokens and data order."""
    steps = [step for step, _ in _losses(whole)]
    assert steps == [step for step, _ in _losses(cut)] and len(steps) == whole["compute"]["steps"]
    for (_, expected), (_, got) in zip(_losses(whole), _losses(cut), strict=True):
        assert got == pytest.approx(expected, rel=LOSS_TOLERANCE, abs=LOSS_TOLERANCE)
    for key in ("steps", "samples", "train_tokens", "data_order_sha256"):
        assert cut["compute"][key] == whole["compute"][key], key


def _assert_cut(probe: PassProbe, record: dict, micro: int, rows_per_example: int = 1) -> None:
    batch = record["training"]["batch_size"]
    assert probe.arguments == (micro, batch // micro)
    assert max(probe.rows) == micro * rows_per_example
    assert record["training"]["micro_batch_size"] == record["memory"]["micro_batch_size"] == micro


@pytest.mark.parametrize("micro", ["3", "0", "-2", "2.5", "16"])
def test_a_micro_batch_that_does_not_divide_the_batch_is_refused_before_loading(make_cfg, no_model_load, micro):
    with pytest.raises(ConfigError) as caught:
        prepare(make_cfg(*TINY, f"budget.micro_batch_size={micro}"))
    assert str(caught.value) == (
        f"budget.micro_batch_size: must be a positive integer dividing budget.batch_size=8, or null (got {micro})"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task=arithmetic", "objective=ppo", "budget.micro_batch_size=4"],
            "budget.micro_batch_size: must divide PPO's minibatch, budget.batch_size / objective.num_minibatches = 2 "
            "(got 4)",
        ),
        (
            ["task=arithmetic_pref", "objective=dpo", "objective.precompute_ref_log_probs=sometimes"],
            "objective.precompute_ref_log_probs: got 'sometimes'; allowed: true, false",
        ),
    ],
)
def test_objective_settings_of_accumulation_are_refused_before_loading(make_cfg, no_model_load, overrides, message):
    with pytest.raises(ConfigError) as caught:
        prepare(make_cfg(*TINY_LM, *overrides))
    assert str(caught.value) == message


def test_the_micro_batch_is_not_part_of_the_run_id(make_cfg):
    """It changes memory, not what is computed: a run that ran out of memory is finished under its own run_id."""
    cut = make_cfg(*TINY, "budget.micro_batch_size=2")
    assert records.run_id(cut, SETTLED) == records.run_id(make_cfg(*TINY), SETTLED)
    pref = [*TINY_LM, "task=arithmetic_pref", "objective=dpo"]
    precomputed = make_cfg(*pref, "objective.precompute_ref_log_probs=true")
    assert records.run_id(precomputed, SETTLED) == records.run_id(make_cfg(*pref), SETTLED)
    assert "micro_batch_size" not in records.identity_config(cut)["budget"]


def test_the_data_order_fingerprint_ignores_padding_and_micro_batches():
    """Two micro-batches, each padded to its own longest row, hash as the whole batch padded to the longest."""
    rows = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]

    def padded(part: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, part))
        ids = torch.tensor([row + [0] * (width - len(row)) for row in part])
        return ids, torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in part])

    whole = example_tokens(*padded(rows), rows_per_example=1)
    assert example_tokens(*padded(rows[:2]), 1) + example_tokens(*padded(rows[2:]), 1) == whole
    # preference batches stack the chosen rows before the rejected ones: pairs (0, 2) and (1, 3)
    pairs = example_tokens(*padded(rows), rows_per_example=2)
    first, second = example_tokens(*padded([rows[0], rows[2]]), 2), example_tokens(*padded([rows[1], rows[3]]), 2)
    assert first + second == pairs and pairs != whole


def test_classification_accumulates_to_the_same_training(tmp_path):
    """The Trainer would trust BERT's **kwargs to normalise over the accumulated batch (it does not): the
    accumulated loss would be the micro-batches' sum, four times the batch's mean."""
    whole, whole_probe = _train(tmp_path / "whole", *TINY_CLS)
    cut, cut_probe = _train(tmp_path / "cut", *TINY_CLS, "budget.micro_batch_size=2")
    _assert_same_training(whole, cut)
    _assert_cut(whole_probe, whole, 8)
    _assert_cut(cut_probe, cut, 2)


def test_adalora_allocates_once_per_optimizer_step_not_per_micro_batch(tmp_path):
    """AdaLoRA's schedule (``total_step``) counts optimizer steps, which accumulation leaves as they were."""
    record, probe = _train(tmp_path, *TINY, "method=adalora", "budget.micro_batch_size=2")
    allocation = record["rank_allocation"]
    assert probe.arguments == (2, 4)
    assert allocation["optimizer_steps"] == allocation["total_step"] == 2
    assert allocation["schedule_completed"]


@pytest.fixture(scope="module")
def whole_dpo(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("dpo"), *TINY_LM, "task=arithmetic_pref", "objective=dpo", "method=lora")


@pytest.mark.parametrize("precompute", [False, True])
def test_dpo_accumulates_to_the_same_training(tmp_path, whole_dpo, precompute):
    """DPO's loss is a mean over pairs, which TRL divides by the accumulation steps; precomputed reference
    log-probabilities (the reference is the model with its LoRA adapter disabled) are the ones computed per step."""
    whole, whole_probe = whole_dpo
    setting = f"objective.precompute_ref_log_probs={str(precompute).lower()}"
    base = [*TINY_LM, "task=arithmetic_pref", "objective=dpo", "method=lora", setting]
    cut, probe = _train(tmp_path, *base, "budget.micro_batch_size=2")
    _assert_same_training(whole, cut)
    _assert_cut(whole_probe, whole, 4, rows_per_example=2)  # chosen and rejected rows in one pass
    _assert_cut(probe, cut, 2, rows_per_example=2)
    assert ("reference_precompute_seconds" in cut["compute"]) == precompute
    assert cut["metrics"]["validation"]["implicit_reward_margin"] == pytest.approx(
        whole["metrics"]["validation"]["implicit_reward_margin"], rel=1e-4, abs=1e-6
    )


def test_dpo_precomputes_a_full_fine_tuning_reference_too(tmp_path, whole_dpo):
    """Without PEFT the reference is the frozen copy the objective passes to TRL: it scores the pairs once."""
    base = [*TINY_LM, "task=arithmetic_pref", "objective=dpo", "method=full"]
    whole, _ = _train(tmp_path / "whole", *base)
    cut, _ = _train(tmp_path / "cut", *base, "budget.micro_batch_size=2", "objective.precompute_ref_log_probs=true")
    _assert_same_training(whole, cut)
    assert cut["compute"]["reference_precompute_seconds"] > 0


def test_sft_accumulates_to_the_same_training(tmp_path):
    """SFT's loss is a mean over completion tokens: the Trainer counts them over the accumulated batch."""
    base = [*TINY_LM, "task=arithmetic_pref", "objective=sft", "method=full"]
    whole, _ = _train(tmp_path / "whole", *base)
    cut, probe = _train(tmp_path / "cut", *base, "budget.micro_batch_size=2")
    _assert_same_training(whole, cut)
    _assert_cut(probe, cut, 2)


def test_ppo_updates_each_minibatch_in_micro_batches(tmp_path):
    """Rollouts stay whole batches (the same samples from the same seed); each minibatch of 4 is one
    optimizer step whose passes run 2 completions at a time, weighted by their share of its tokens. One
    PPO step holds four updates (2 epochs × 2 minibatches), so its loss already depends on their gradients."""
    base = [*TINY_LM, "budget.batch_size=8", "budget.max_steps=1", "task=arithmetic", "objective=ppo", "method=full"]
    whole, whole_probe = _train(tmp_path / "whole", *base)
    cut, probe = _train(tmp_path / "cut", *base, "budget.micro_batch_size=2")
    _assert_same_training(whole, cut)
    assert max(whole_probe.rows) == 4 and max(probe.rows) == 2  # minibatch, then micro-batch
    assert cut["compute"]["ppo_updates"] == whole["compute"]["ppo_updates"] == 2 * 2
    assert cut["compute"]["rollout_tokens"] == whole["compute"]["rollout_tokens"]


def test_grpo_counts_each_generation_batch_once(tmp_path):
    """TRL hands the whole generation batch to every accumulation step; its completions are counted once."""
    base = [*TINY_LM, "budget.batch_size=8", "budget.max_steps=1", "task=arithmetic", "objective=grpo", "method=full"]
    cut, probe = _train(tmp_path, *base, "budget.micro_batch_size=4")
    assert probe.arguments == (4, 2) and max(probe.rows) == 4
    assert cut["compute"]["samples"] == cut["compute"]["reward_evaluations"] == 8
