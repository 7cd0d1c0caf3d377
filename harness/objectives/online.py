"""Online RL baselines beside PPO: TRL's maintained RLOO and GRPO trainers.

Both sample ``num_generations`` completions per prompt and use the group as
the baseline (leave-one-out mean for RLOO, Ahmadian et al., 2024; group
mean and std for GRPO, Shao et al., 2024), so neither needs a value model.
They get the same reward as PPO: the verifiable check of the task's answer,
or the frozen reward model of an ``objective=reward`` run. The reward is
wrapped in a function that also counts what the rollouts cost (generated
tokens, reward-model forward passes) for the record.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from harness import budget as budget_stage
from harness.compat import pin_trl_reference
from harness.config import ConfigError
from harness.objectives.generation import max_new_tokens, rewards
from harness.objectives.rl_reward import check_reward_settings, load_reward_model, verifiable_scores
from harness.objectives.trl_trainers import TRLObjective


def _text(completion: Any) -> str:
    """A completion as text, whether TRL passes it as a string or as a list of messages."""
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


class RolloutReward:
    """TRL reward function (``prompts, completions, **columns -> scores``) that tallies the rollout cost."""

    __name__ = "task_reward"  # TRL names the logged reward after the function

    def __init__(self, task, tokenizer, reward_model=None, batch_size: int = 8):
        self.task, self.tokenizer, self.reward_model, self.batch_size = task, tokenizer, reward_model, batch_size
        self.spent = {"rollout_tokens": 0, "reward_evaluations": 0, "reward_model_forward_passes": 0}
        self.policy = None  # set once the trainer exists: its mode tells training rollouts from evaluation ones

    def __call__(self, prompts, completions, answer=None, prompt_text=None, **_) -> list[float]:
        texts = [_text(c) for c in completions]
        if self.policy is None or self.policy.training:  # evaluation rollouts are not training compute
            self.spent["rollout_tokens"] += sum(
                len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts
            )
            self.spent["reward_evaluations"] += len(texts)
            self.spent["reward_model_forward_passes"] += len(texts) if self.reward_model is not None else 0
        if self.reward_model is not None:
            return rewards(self.reward_model, self.tokenizer, list(prompt_text), texts, self.batch_size)
        return verifiable_scores(self.task, texts, answer)


class OnlineRLObjective(TRLObjective):
    loss_from_model = False  # its loss is computed from the logits
    completion_columns = ()  # completions are generated, not given

    def check(self, cfg) -> None:
        super().check(cfg)
        generations = self.settings.get("num_generations")
        if not isinstance(generations, int) or generations < 2:
            raise ConfigError("objective.num_generations", f"must be an integer of at least 2 (got {generations!r})")
        if cfg.budget.batch_size % generations:
            raise ConfigError(
                "objective.num_generations",
                f"must divide budget.batch_size={cfg.budget.batch_size} (got {generations})",
            )
        check_reward_settings(self.settings, cfg)

    def config_fields(self, cfg) -> dict[str, Any]:
        return {
            "num_generations": self.settings["num_generations"],
            "max_completion_length": max_new_tokens(cfg.task),
            "beta": float(self.settings["beta"]),
            "temperature": float(self.settings["temperature"]),
            "per_device_eval_batch_size": self._eval_batch_size(cfg),
        }

    def _eval_batch_size(self, cfg) -> int:
        """The micro-batch rounded up to whole prompt groups: TRL evaluates ``num_generations`` completions
        of each prompt in one batch. Training needs no rounding, since TRL generates the whole batch
        (``budget.batch_size`` completions) at once and only its forward and backward passes are cut."""
        generations = int(self.settings["num_generations"])
        return -(-budget_stage.micro_batch_size(cfg.budget) // generations) * generations

    def train_rows(self, split: Dataset) -> Dataset:
        def convert(row: dict[str, Any]) -> dict[str, Any]:
            return {
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "prompt_text": row["prompt"],
                "answer": row.get("answer"),
            }

        return split.map(convert, remove_columns=split.column_names)

    def trainer_kwargs(self, inputs, model) -> dict[str, Any]:
        from harness import models

        cfg = inputs.cfg
        reward_model = None
        if self.settings["reward"] == "model":
            reward_model, _ = load_reward_model(cfg, self.settings["reward_run"])
        tokenizer, batch = models.load_tokenizer(cfg.model), budget_stage.micro_batch_size(cfg.budget)
        self.reward = RolloutReward(cfg.task, tokenizer, reward_model, batch)
        self._pin_reference(inputs, model)
        self.reward.policy = model
        return {"reward_funcs": [self.reward]}

    def spending(self, inputs, trainer) -> dict[str, Any]:
        """Beside the examples, what the training rollouts cost (``RolloutReward``'s tally)."""
        return {**super().spending(inputs, trainer), **self.reward.spent}

    def frozen_models(self, trainer, wrapped) -> list[Any]:
        return [*super().frozen_models(trainer, wrapped), self.reward.reward_model]

    def _pin_reference(self, inputs, model) -> None:
        """TRL rebuilds the KL reference of a non-PEFT model from ``config._name_or_path``; point that at the
        starting weights, saved once, so a model drawn at random (tests) or wrapped by the method gets itself
        (``compat.pin_trl_reference``)."""
        pin_trl_reference(model, self.settings["beta"], inputs.work_dir / "reference")


class RLOOObjective(OnlineRLObjective):
    def trl_classes(self):
        from trl import RLOOConfig, RLOOTrainer

        return RLOOTrainer, RLOOConfig


class GRPOObjective(OnlineRLObjective):
    def trl_classes(self):
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer, GRPOConfig
