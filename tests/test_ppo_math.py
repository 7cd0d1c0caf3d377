"""PPO's pieces against hand computations: per-token KL reward, GAE, clipped policy and value losses."""

from __future__ import annotations

import math

import pytest
import torch

from harness.objectives import ppo_math


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = ppo_math.generalized_advantages(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # t=2: δ = 1 − 0.7 = 0.3; t=1: δ = 0.7 − 0.6 = 0.1, A = 0.1 + 0.95·0.3; t=0: δ = 0.1, A = 0.1 + 0.95·0.385
    assert advantages.tolist()[0] == pytest.approx([0.46575, 0.385, 0.3])
    assert returns.tolist()[0] == pytest.approx([0.96575, 0.985, 1.0])


def test_gae_stops_at_the_end_of_a_completion():
    rewards = torch.tensor([[0.0, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 9.9]])  # the padded position's value must not leak back
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, returns = ppo_math.generalized_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    # t=1 (last real token): δ = 2 − 0.2 = 1.8; t=0: δ = 0.9·0.2 − 0.1 = 0.08, A = 0.08 + 0.45·1.8 = 0.89
    assert advantages.tolist()[0] == pytest.approx([0.89, 1.8, 0.0])
    assert returns.tolist()[0] == pytest.approx([0.99, 2.0, 0.0])


def test_kl_penalty_on_every_token_and_the_score_on_the_last_generated_one():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.5], [-1.5, -2.0, -2.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    kl = ppo_math.kl_per_token(logprobs, ref_logprobs, mask)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -0.5], [0.5, 0.0, 0.0]]))
    rewards = ppo_math.per_token_rewards(torch.tensor([1.0, 3.0]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.05], [-0.05, 3.0, 0.0]]))


def test_clipped_policy_loss_takes_the_pessimistic_side():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5]]))
    advantages = torch.tensor([[1.0, -1.0, 1.0]])
    loss, clip_fraction = ppo_math.clipped_policy_loss(new, old, advantages, torch.ones(1, 3), clip_range=0.2)
    # ρ=1.5, A=+1: max(−1.5, −1.2) = −1.2 (clipped); ρ=1.5, A=−1: max(1.5, 1.2) = 1.5; ρ=0.5, A=+1: max(−0.5, −0.8) = −0.5
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5) / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)


def test_policy_loss_ignores_padding_and_is_minus_advantage_at_ratio_one():
    advantages = torch.tensor([[2.0, 100.0]])
    loss, _ = ppo_math.clipped_policy_loss(
        torch.zeros(1, 2), torch.zeros(1, 2), advantages, torch.tensor([[1.0, 0.0]]), 0.2
    )
    assert loss.item() == pytest.approx(-2.0)


def test_clipped_value_loss():
    loss = ppo_math.clipped_value_loss(
        torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2
    )
    # V moved 0.5 from V_old; clipped to 0.7: max((1−2)², (0.7−2)²) = 1.69, halved
    assert loss.item() == pytest.approx(0.845)


def test_whitening_uses_only_unmasked_entries():
    values = torch.tensor([[1.0, 3.0, 1000.0]])
    whitened = ppo_math.masked_whiten(values, torch.tensor([[1.0, 1.0, 0.0]]))
    assert whitened.tolist()[0][:2] == pytest.approx([-1.0, 1.0], abs=1e-4) and whitened[0, 2] == 0
    assert not math.isnan(ppo_math.masked_mean(values, torch.zeros(1, 3)).item())
