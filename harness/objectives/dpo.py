"""Direct preference optimisation (Rafailov et al., 2023): TRL's DPOTrainer on prompt/chosen/rejected pairs.

The reference policy is the starting model. With a PEFT method TRL adds a
frozen copy of the starting adapter (named "ref") beside the trained one, so
the base weights are held once. AdaLoRA allows a single adapter per model, so
it, like every non-PEFT method (full, bitfit, bottleneck adapters), gets a
frozen copy of the model loaded from the same weights, passed explicitly
because TRL cannot reload an in-memory model.
"""

from __future__ import annotations

from typing import Any

from harness import budget as budget_stage
from harness import methods, models
from harness.config import ConfigError
from harness.objectives.trl_trainers import TRLObjective

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


class DPOObjective(TRLObjective):
    loss_from_model = False  # its loss is computed from the logits
    completion_columns = ("chosen", "rejected")

    def check(self, cfg) -> None:
        super().check(cfg)
        beta = self.settings.get("beta")
        if not isinstance(beta, int | float) or isinstance(beta, bool) or beta <= 0:
            raise ConfigError("objective.beta", f"must be a positive number (got {beta!r})")
        if self.settings.get("loss_type") not in LOSS_TYPES:
            raise ConfigError(
                "objective.loss_type", f"got {self.settings.get('loss_type')!r}; allowed: {', '.join(LOSS_TYPES)}"
            )

    def implicit_reward_beta(self) -> float | None:
        return float(self.settings["beta"])

    def trl_classes(self):
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig

    def config_fields(self, cfg) -> dict[str, Any]:
        return {
            "beta": float(self.settings["beta"]),
            "loss_type": [self.settings["loss_type"]],
            "max_length": budget_stage.sequence_length(cfg),
        }

    def trainer_kwargs(self, inputs, model) -> dict[str, Any]:
        if methods.is_peft_model(model) and not _one_adapter_only(model):
            return {}
        cfg = inputs.cfg
        reference = self.load_model(cfg, models.quantization_of(cfg))
        return {"ref_model": reference.requires_grad_(False).eval()}


def _one_adapter_only(model) -> bool:
    """AdaLoRA refuses a second adapter, so TRL could not add its frozen "ref" copy."""
    from peft import PeftType

    return any(config.peft_type == PeftType.ADALORA for config in model.peft_config.values())
