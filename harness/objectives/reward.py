"""Reward modelling: TRL's RewardTrainer, a one-output scoring head trained on preference pairs (Bradley-Terry).

The reward model is the base model with a new scalar head; the method
decides what else trains. Its quality is held-out reward accuracy (how
often it scores the chosen answer above the rejected one): its objective
YAML makes that the primary metric, since it has no log-probabilities. With
``keep_artifacts=true`` the trained model is kept for PPO, RLOO and GRPO.
"""

from __future__ import annotations

from typing import Any

from harness import budget as budget_stage
from harness import models
from harness.objectives.trl_trainers import TRLObjective


class RewardObjective(TRLObjective):
    loss_from_model = False  # its loss is computed from the logits
    head = "sequence_classification"
    peft_task_type = "SEQ_CLS"
    completion_columns = ("chosen", "rejected")
    scores_by_reward = True  # a reward model scores pairs by its output; it does not generate

    def trl_classes(self):
        from trl import RewardConfig, RewardTrainer

        return RewardTrainer, RewardConfig

    def config_fields(self, cfg) -> dict[str, Any]:
        return {"max_length": budget_stage.sequence_length(cfg)}

    def load_model(self, cfg, quantization: str | None):
        return models.load_classifier(cfg.model, 1, quantization, cfg.seed)
