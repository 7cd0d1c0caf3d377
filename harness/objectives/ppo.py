"""RLHF with PPO, written out in the project (TRL removed its PPO trainer in 1.13).

One PPO step on a batch of prompts (Ouyang et al., 2022; the recipe of TRL's
former PPOTrainer):

1. **Rollout**: the policy samples a completion per prompt.
2. **Score**: the reward is a verifiable check of the answer (embedded and
   GSM8K-style tasks) or a frozen reward model trained by ``objective=reward``
   (``objective.reward_run=<run_id>``); both are in ``rl_reward``.
3. **Per-token reward**: −β·KL(policy‖reference) on every generated token,
   the score added on the last one. With a PEFT method the reference is the
   same model with its adapter disabled (no second copy); otherwise a frozen
   copy.
4. **Advantages**: a value model (the base model with a one-label
   token-classification head, trained by the same method) and GAE(γ, λ).
5. **Update**: ``ppo_epochs`` passes over minibatches of the rollout with the
   clipped policy loss and the clipped value loss (``ppo_math``).

It is a transformers Trainer with its own ``train`` loop, so the budget
callback, the study's pruner, the learning curve, the shared generation
metrics and every measurement work as for the other objectives. A budget
step is one PPO step (one rollout batch); rollout tokens and reward-model
forward passes are counted in the record.

``budget.micro_batch_size`` bounds every forward pass over the rollout (its
scoring and the updates): each minibatch's forward and backward passes run in
chunks of at most that many completions, their gradients accumulated into the
minibatch's one optimizer step. Sampling stays one batch of ``budget.batch_size``
prompts, so the completions drawn do not depend on it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerState

from harness import budget as budget_stage
from harness import compat, methods, models
from harness.config import ConfigError
from harness.objectives import ppo_math
from harness.objectives.base import (
    DataOrderFingerprint,
    EvaluationWindows,
    Objective,
    RunInputs,
    TrainerSetup,
    WrappedModels,
    training_arguments,
)
from harness.objectives.generation import GenerationEvalMixin, chat_prompt, max_new_tokens, padding_side
from harness.objectives.rl_reward import check_reward_settings, load_reward_model, model_reward, verifiable_reward
from harness.utilisation import TrainingFlops

POSITIVE_SETTINGS = (
    "kl_coef",
    "clip_range",
    "clip_range_value",
    "vf_coef",
    "temperature",
    "ppo_epochs",
    "num_minibatches",
)
UNIT_SETTINGS = ("gamma", "lam")


class PolicyAndValue(nn.Module):
    """Policy and value model as one module, so one optimizer and one checkpoint cover both."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy, self.value = policy, value

    def forward(self, **kwargs):
        return self.policy(**kwargs)

    def artifact_parts(self) -> dict[str, nn.Module]:
        """How a kept run saves the pair (harness.export): the policy at the top, as any run's model, and the
        value model in ``value/``, each in its own format."""
        return {"": self.policy, "value": self.value}


def positions(attention: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as generation computes them."""
    return (attention.cumsum(-1) - 1).clamp(min=0)


def response_logprobs(model, ids, attention, query_length: int, temperature: float) -> torch.Tensor:
    """log π(token) of each response token, from the logits at the position before it."""
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions(attention)).logits
    logits = logits[:, -ids.shape[1] :]  # prompt tuning prepends virtual tokens' logits: drop them
    logits = logits[:, query_length - 1 : -1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, query_length:, None]).squeeze(-1)


def response_values(value_model, ids, attention, query_length: int) -> torch.Tensor:
    """V(state before each response token)."""
    out = value_model(input_ids=ids, attention_mask=attention, position_ids=positions(attention)).logits
    return out[:, -ids.shape[1] :][:, query_length - 1 : -1, 0].float()


def in_chunks(score: Callable[[slice], torch.Tensor], rows: int, size: int) -> torch.Tensor:
    """``score`` of rows in slices of at most ``size`` (the micro-batch), concatenated: no forward pass holds
    more activations than a micro-batch's."""
    return torch.cat([score(slice(start, start + size)) for start in range(0, rows, size)])


def response_mask(responses: torch.Tensor, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """1 up to and including the first end-of-sequence token of each response, 0 after it."""
    is_end = responses == eos_token_id
    after_end = (is_end.cumsum(dim=1) - is_end.long()) > 0
    mask = ~after_end
    if eos_token_id != pad_token_id:
        mask &= responses != pad_token_id
    return mask.float()


class PPOTrainer(EvaluationWindows, DataOrderFingerprint, TrainingFlops, GenerationEvalMixin, Trainer):
    """transformers' Trainer with PPO's rollout-and-update loop as its ``train``."""

    def __init__(self, *args, ppo: dict[str, Any], reference: nn.Module | None, reward_fn, task, **kwargs):
        super().__init__(*args, **kwargs)
        self.ppo, self.reference, self.reward_fn, self.task = ppo, reference, reward_fn, task
        self.spent = {"rollout_tokens": 0, "reward_evaluations": 0, "ppo_updates": 0}

    def generation_model(self):
        return self.model.policy

    def rollout_size(self) -> int:
        """Prompts per PPO step: the budget's batch, which the Trainer's arguments hold as micro-batch × accumulation steps."""
        return self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps

    def _prompt_batches(self):
        """Prompts in an order fixed by data_seed (the same for every method), reshuffled each epoch."""
        generator = torch.Generator().manual_seed(self.args.data_seed)
        rows, size = self.train_dataset, self.rollout_size()
        if len(rows) < size:
            raise ValueError(f"budget.batch_size={size} is larger than the {len(rows)} training prompts")
        while True:
            order = torch.randperm(len(rows), generator=generator).tolist()
            for start in range(0, len(rows) - size + 1, size):
                yield rows.select(order[start : start + size])

    def train(self, **kwargs):
        """Rollout, score, update, repeated under the budget; dropout off so that the first update's ratio is 1."""
        args = self.args
        compat.disable_dropout(self.model)
        self.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
        self.state = TrainerState(
            max_steps=args.max_steps, logging_steps=args.logging_steps, eval_steps=args.eval_steps
        )
        self.state.is_world_process_zero = True
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        if args.eval_on_start:
            self.evaluate()
        batches = self._prompt_batches()
        while self.state.global_step < args.max_steps and not self.control.should_training_stop:
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            batch = next(batches)
            logs = self.flop_tally.step(functools.partial(self._ppo_step, batch), batch)
            self.state.global_step += 1
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.state.global_step % args.logging_steps == 0 or self.control.should_training_stop:
                self.log(logs)
            if self.state.global_step % args.eval_steps == 0:
                self.evaluate()
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The shared generation metrics only: PPO has no held-out loss."""
        with self.evaluation_window():
            return self._evaluate(metric_key_prefix)

    def _evaluate(self, metric_key_prefix: str) -> dict[str, float]:
        started = time.perf_counter()
        metrics = self._generation_metrics(metric_key_prefix)
        metrics[f"{metric_key_prefix}_runtime"] = time.perf_counter() - started
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _rollout(self, batch) -> dict[str, torch.Tensor]:
        tokenizer, policy, settings = self.processing_class, self.model.policy, self.ppo
        device = next(policy.parameters()).device
        with padding_side(tokenizer, "left"):
            queries = tokenizer(
                [chat_prompt(tokenizer, p) for p in batch["prompt"]],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(device)
        self.note_batch(queries["input_ids"].cpu().numpy().tobytes(), len(batch["prompt"]))
        policy.eval()
        with torch.no_grad():
            generated = policy.generate(
                **queries,
                do_sample=True,
                temperature=settings["temperature"],
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens(self.task),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            q = queries["input_ids"].shape[1]
            responses = generated[:, q:]
            mask = response_mask(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
            attention = torch.cat([queries["attention_mask"], mask.long()], dim=1)
            old_logprobs, ref_logprobs, old_values = self._score_rollout(generated, attention, q)
            texts = tokenizer.batch_decode(
                responses * mask.long() + tokenizer.pad_token_id * (1 - mask.long()), skip_special_tokens=True
            )
            scores = torch.tensor(self.reward_fn(batch, texts), dtype=torch.float32, device=device)
        policy.train()
        return dict(
            ids=generated,
            attention=attention,
            mask=mask,
            q=q,
            old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs,
            old_values=old_values,
            scores=scores,
        )

    def _score_rollout(self, ids, attention, q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The policy's and the reference's log-probabilities of the sampled tokens and the values, in micro-batches."""
        policy, temperature = self.model.policy, self.ppo["temperature"]
        rows, size = len(ids), self.args.per_device_train_batch_size

        def logprobs_of(model) -> torch.Tensor:
            return in_chunks(lambda i: response_logprobs(model, ids[i], attention[i], q, temperature), rows, size)

        old_logprobs = logprobs_of(policy)
        if self.reference is None:  # PEFT: the reference is the model without its adapter
            with policy.disable_adapter():
                ref_logprobs = logprobs_of(policy)
        else:
            ref_logprobs = logprobs_of(self.reference)
        values = in_chunks(lambda i: response_values(self.model.value, ids[i], attention[i], q), rows, size)
        return old_logprobs, ref_logprobs, values

    def _ppo_step(self, batch) -> dict[str, float]:
        s = self.ppo
        rollout = self._rollout(batch)
        mask = rollout["mask"]
        rewards_ = ppo_math.per_token_rewards(
            rollout["scores"], rollout["old_logprobs"], rollout["ref_logprobs"], mask, s["kl_coef"]
        )
        advantages, returns = ppo_math.generalized_advantages(
            rewards_, rollout["old_values"], mask, s["gamma"], s["lam"]
        )
        advantages = ppo_math.masked_whiten(advantages, mask)
        size = len(mask)
        minibatch = max(1, size // int(s["num_minibatches"]))
        totals = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0}
        updates = 0
        for _ in range(int(s["ppo_epochs"])):
            for start in range(0, size, minibatch):
                losses = self._update(rollout, advantages, returns, slice(start, min(start + minibatch, size)))
                updates += 1
                for key, value in losses.items():
                    totals[key] += value
        self.lr_scheduler.step()
        generated = int(mask.sum().item())
        self.state.num_input_tokens_seen += int(rollout["attention"].sum().item())
        self.spent["rollout_tokens"] += generated
        self.spent["reward_evaluations"] += size
        self.spent["ppo_updates"] += updates
        kl = ppo_math.masked_mean(ppo_math.kl_per_token(rollout["old_logprobs"], rollout["ref_logprobs"], mask), mask)
        return {
            "loss": (totals["policy_loss"] + s["vf_coef"] * totals["value_loss"]) / updates,
            "score": rollout["scores"].mean().item(),
            "kl": kl.item(),
            "policy_loss": totals["policy_loss"] / updates,
            "value_loss": totals["value_loss"] / updates,
            "clip_fraction": totals["clip_fraction"] / updates,
            "response_length": generated / size,
        }

    def _update(self, rollout: dict[str, Any], advantages, returns, rows: slice) -> dict[str, float]:
        """One optimizer step on the minibatch ``rows``, its forward and backward passes in micro-batches.

        The losses are token means over the whole minibatch: each micro-batch's
        mean is weighted by its share of the minibatch's tokens, so the gradients
        add up to the minibatch's, whatever ``budget.micro_batch_size`` is.
        """
        s, q = self.ppo, rollout["q"]
        tokens = rollout["mask"][rows].sum().clamp(min=1)
        totals = dict.fromkeys(("policy_loss", "value_loss", "clip_fraction"), 0.0)
        for start in range(rows.start, rows.stop, self.args.per_device_train_batch_size):
            i = slice(start, min(start + self.args.per_device_train_batch_size, rows.stop))
            ids, attention, mask = rollout["ids"][i], rollout["attention"][i], rollout["mask"][i]
            share = mask.sum() / tokens
            logprobs = response_logprobs(self.model.policy, ids, attention, q, s["temperature"])
            values = response_values(self.model.value, ids, attention, q)
            policy_loss, clip_fraction = ppo_math.clipped_policy_loss(
                logprobs, rollout["old_logprobs"][i], advantages[i], mask, s["clip_range"]
            )
            value_loss = ppo_math.clipped_value_loss(
                values, rollout["old_values"][i], returns[i], mask, s["clip_range_value"]
            )
            loss = share * (policy_loss + s["vf_coef"] * value_loss)
            if not torch.isfinite(loss):
                raise budget_stage.NonFiniteLossError(f"PPO loss is {loss.item()} at step {self.state.global_step}")
            self.accelerator.backward(loss)
            for key, value in (
                ("policy_loss", policy_loss),
                ("value_loss", value_loss),
                ("clip_fraction", clip_fraction),
            ):
                totals[key] += (share * value).item()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.control = self.callback_handler.on_optimizer_step(self.args, self.state, self.control)
        self.optimizer.zero_grad()
        return totals


@dataclasses.dataclass(frozen=True)
class PPOModels(WrappedModels):
    """Beside the policy and its value model, what PPO's trainer needs: the reference and the reward."""

    reference: nn.Module | None = None  # a frozen copy for a non-PEFT policy; None: the policy without its adapter
    reward_model: nn.Module | None = None  # the reward run's frozen model (reward=model)
    reward_fn: Any = None  # (batch, completions) -> scores
    tokenizer: Any = None


class PPOObjective(Objective):
    loss_from_model = False  # its loss is computed from the logits

    def check(self, cfg) -> None:
        super().check(cfg)
        for key in POSITIVE_SETTINGS:
            value = self.settings.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"objective.{key}", f"must be a positive number (got {value!r})")
        for key in UNIT_SETTINGS:
            value = self.settings.get(key)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"objective.{key}", f"must be in [0, 1] (got {value!r})")
        check_reward_settings(self.settings, cfg)
        if cfg.budget.batch_size % int(self.settings["num_minibatches"]):
            raise ConfigError("objective.num_minibatches", f"must divide budget.batch_size={cfg.budget.batch_size}")
        minibatch = cfg.budget.batch_size // int(self.settings["num_minibatches"])
        if cfg.budget.get("micro_batch_size") and minibatch % budget_stage.micro_batch_size(cfg.budget):
            raise ConfigError(
                "budget.micro_batch_size",
                f"must divide PPO's minibatch, budget.batch_size / objective.num_minibatches = {minibatch} "
                f"(got {cfg.budget.micro_batch_size})",
            )

    def optimizer_steps_per_budget_step(self) -> int:
        return int(self.settings["ppo_epochs"]) * int(self.settings["num_minibatches"])

    def load_model(self, cfg, quantization: str | None):
        """The policy's base (and, for a non-PEFT method, its frozen reference copy)."""
        return models.load_causal_lm(cfg.model, quantization, cfg.seed)

    def load_models(self, inputs: RunInputs) -> PPOModels:
        """The reward, the policy, its value model (the same method on a one-label token head) and, for a
        non-PEFT method, a frozen reference copy (a PEFT policy is its own reference, adapter disabled)."""
        cfg, s = inputs.cfg, self.settings
        tokenizer = models.load_tokenizer(cfg.model)
        reward_model = None
        if s["reward"] == "model":
            reward_model, _ = load_reward_model(cfg, s["reward_run"])
            reward_fn = model_reward(reward_model, tokenizer, budget_stage.micro_batch_size(cfg.budget))
        else:
            reward_fn = verifiable_reward(cfg.task)
        quantization = models.quantization_of(cfg)
        policy = self.load_model(cfg, quantization)
        inputs.on_loaded(policy)
        policy = methods.apply_method(policy, inputs.method_object, inputs.context)
        value_context = dataclasses.replace(
            inputs.context, head_modules=list(cfg.model.head_modules), peft_task_type="TOKEN_CLS"
        )
        value_model = models.load_model(cfg.model, quantization, cfg.seed, "token_classification", 1)
        value_model = methods.apply_method(value_model, methods.build_method(cfg.method, value_context), value_context)
        reference = None
        if not methods.is_peft_model(policy):
            reference = self.load_model(cfg, quantization).eval().requires_grad_(False)
        return PPOModels(
            trained=PolicyAndValue(policy, value_model),
            evaluated=policy,
            head_modules=[],
            auxiliary=value_model,
            reference=reference,
            reward_model=reward_model,
            reward_fn=reward_fn,
            tokenizer=tokenizer,
        )

    def build_trainer(
        self, inputs: RunInputs, wrapped: PPOModels, held_out: dict[str, Any], callbacks: list[Any]
    ) -> TrainerSetup:
        """PPO's trainer; its evaluation scores the held-out rows it was given, so the sets carry no rows."""
        cfg, s = inputs.cfg, self.settings
        args = training_arguments(cfg, str(inputs.work_dir / "trainer"), inputs.precision, inputs.device)
        trainer = PPOTrainer(
            model=wrapped.trained,
            args=args,
            train_dataset=inputs.splits["train"],
            eval_dataset=held_out["eval"],
            processing_class=wrapped.tokenizer,
            callbacks=callbacks,
            ppo={k: s[k] for k in (*POSITIVE_SETTINGS, *UNIT_SETTINGS)},
            reference=wrapped.reference,
            reward_fn=wrapped.reward_fn,
            task=cfg.task,
        )
        trainer.score_held_out(held_out, cfg.task, cfg.budget.get("eval_batch_size"))
        return TrainerSetup(trainer, dict.fromkeys(held_out))

    def spending(self, inputs: RunInputs, trainer: PPOTrainer) -> dict[str, Any]:
        """Rollout tokens, rewards and PPO updates, and the reward model's forward passes (none when verifiable)."""
        passes = trainer.spent["reward_evaluations"] if self.settings["reward"] == "model" else 0
        return {**trainer.spent, "reward_model_forward_passes": passes}

    def frozen_models(self, trainer: PPOTrainer, wrapped: PPOModels) -> list[Any]:
        return [wrapped.reference, wrapped.reward_model]

    def samples(self, trainer: PPOTrainer) -> list[dict[str, Any]]:
        return trainer.samples_by_split()
