"""Direct preference optimisation (Rafailov et al., 2023): TRL's DPOTrainer on prompt/chosen/rejected pairs.

The reference policy is the starting model. With a PEFT method TRL adds a
frozen copy of the starting adapter (named "ref") beside the trained one, so
the base weights are held once. AdaLoRA allows a single adapter per model, so
it, like every non-PEFT method (full, bitfit, bottleneck adapters), gets a
frozen copy of the model loaded from the same weights, passed explicitly
because TRL cannot reload an in-memory model.

``objective.precompute_ref_log_probs=true`` has TRL score every training pair
with the reference once, before training (in batches of
``budget.micro_batch_size``), instead of once per step beside the policy's
forward pass: the training peak loses the reference's forward pass and each
step its time. The pass is timed apart (``compute.reference_precompute_seconds``)
since it is training compute spent outside the training window, over the whole
training split. The frozen copy of a non-PEFT reference is still held: the
held-out implicit reward scores the test split against it after training.
"""

from __future__ import annotations

import time
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
        precompute = self.settings.get("precompute_ref_log_probs", False)
        if not isinstance(precompute, bool):
            raise ConfigError("objective.precompute_ref_log_probs", f"got {precompute!r}; allowed: true, false")

    def implicit_reward_beta(self) -> float | None:
        return float(self.settings["beta"])

    def trl_classes(self):
        from trl import DPOConfig

        return timed_precompute_trainer(), DPOConfig

    def config_fields(self, cfg) -> dict[str, Any]:
        return {
            "beta": float(self.settings["beta"]),
            "loss_type": [self.settings["loss_type"]],
            "max_length": budget_stage.sequence_length(cfg),
            "precompute_ref_log_probs": self._precomputes(),
        }

    def spending(self, inputs, trainer) -> dict[str, Any]:
        """Beside the examples, the reference's pass over the training split when it was precomputed."""
        spent = super().spending(inputs, trainer)
        if self._precomputes():
            spent["reference_precompute_seconds"] = trainer.reference_precompute_seconds
        return spent

    def _precomputes(self) -> bool:
        return bool(self.settings.get("precompute_ref_log_probs", False))

    def trainer_kwargs(self, inputs, model) -> dict[str, Any]:
        if methods.is_peft_model(model) and not _one_adapter_only(model):
            return {}
        cfg = inputs.cfg
        reference = self.load_model(cfg, models.quantization_of(cfg))
        return {"ref_model": reference.requires_grad_(False).eval()}


def timed_precompute_trainer() -> type:
    """TRL's DPOTrainer, timing its reference pass over the training split (its passes over held-out
    splits are evaluation work, not counted)."""
    from trl import DPOTrainer

    class TimedPrecomputeDPOTrainer(DPOTrainer):
        reference_precompute_seconds = 0.0

        def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
            started = time.perf_counter()
            try:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            finally:
                if name == "train":
                    self.reference_precompute_seconds += time.perf_counter() - started

    return TimedPrecomputeDPOTrainer


def _one_adapter_only(model) -> bool:
    """AdaLoRA refuses a second adapter, so TRL could not add its frozen "ref" copy."""
    from peft import PeftType

    return any(config.peft_type == PeftType.ADALORA for config in model.peft_config.values())
