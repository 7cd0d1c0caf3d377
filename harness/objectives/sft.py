"""Instruction tuning: TRL's SFTTrainer, loss on the completion tokens only.

The rows are prompt-completion pairs in conversational form, so TRL applies
the model's chat template and masks the prompt itself (SmolLM2's template has
no generation markers, so assistant-only masking of whole conversations is
not available; prompt-completion masking is). On a preference task the
chosen answer is the completion.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from harness import budget as budget_stage
from harness.objectives.trl_trainers import TRLObjective, conversational


class SFTObjective(TRLObjective):
    # TRL 1.16's SFTTrainer.compute_loss sums the fused head's log-probabilities itself and never reads the
    # model's outputs.loss, so a term PEFT adds there (AdaLoRA's orthogonal penalty) is not trained on.
    loss_from_model = False

    def trl_classes(self):
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer, SFTConfig

    def config_fields(self, cfg) -> dict[str, Any]:
        return {"max_length": budget_stage.sequence_length(cfg), "completion_only_loss": True, "packing": False}

    def train_rows(self, split: Dataset) -> Dataset:
        if "completion" not in split.column_names:
            split = split.rename_column("chosen", "completion").remove_columns(["rejected"])
        return conversational(split, ("completion",))
