"""Objectives trained by a TRL trainer (SFT, reward, DPO, RLOO, GRPO): the hooks of ``Objective.fit`` they share.

Each objective module (sft, reward, dpo, online) only says which TRL trainer and
config it uses, how its rows look, and its own settings. Everything else is
identical across them, which is what makes their figures comparable: the
same tokenizer and chat template, the same held-out rows, the same
generation and preference metrics (``generation.GenerationEvalMixin``), the
same budget callback and measurements.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from datasets import Dataset
from transformers import PrinterCallback

from harness import budget as budget_stage
from harness import models
from harness.objectives.base import (
    DataOrderFingerprint,
    EvaluationWindows,
    Objective,
    RunInputs,
    TrainerSetup,
    WrappedModels,
    training_arguments,
)
from harness.objectives.generation import GenerationEvalMixin, as_conversation
from harness.utilisation import TrainingFlops


def conversational(split: Dataset, columns: tuple[str, ...]) -> Dataset:
    """Rows in TRL's conversational form: the prompt as a user turn, each completion as an assistant turn."""

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        out = as_conversation(row["prompt"])
        for column in columns:
            out[column] = [{"role": "assistant", "content": row[column]}]
        return out

    return split.map(convert, remove_columns=split.column_names)


class TRLObjective(Objective):
    """Template for objectives trained by a TRL trainer; subclasses set the hooks below."""

    completion_columns: tuple[str, ...] = ("completion",)
    scores_by_reward = False  # a reward model: pairs scored by its output, no generation

    def implicit_reward_beta(self) -> float | None:
        """β of an implicit reward to score held-out pairs by (DPO), beside the mean token log-probability."""
        return None

    @abstractmethod
    def trl_classes(self) -> tuple[type, type]:
        """(Trainer class, its config class)."""

    def config_fields(self, cfg) -> dict[str, Any]:
        """The TRL config's own fields for this run."""
        return {}

    def train_rows(self, split: Dataset) -> Dataset:
        return conversational(split, self.completion_columns)

    def load_model(self, cfg, quantization: str | None):
        return models.load_causal_lm(cfg.model, quantization, cfg.seed)

    def trainer_kwargs(self, inputs: RunInputs, model) -> dict[str, Any]:
        return {}

    def build_trainer(
        self, inputs: RunInputs, wrapped: WrappedModels, held_out: dict[str, Any], callbacks: list[Any]
    ) -> TrainerSetup:
        """The TRL trainer on rows in its own form, scoring the held-out rows with the shared generation metrics."""
        cfg = inputs.cfg
        tokenizer = models.load_tokenizer(cfg.model)
        trainer_class, config_class = self.trl_classes()
        args = training_arguments(
            cfg,
            str(inputs.work_dir / "trainer"),
            inputs.precision,
            inputs.device,
            config_class,
            **self.config_fields(cfg),
        )
        trainer = _measured(trainer_class)(
            model=wrapped.trained,
            args=args,
            train_dataset=self.train_rows(inputs.splits["train"]),
            eval_dataset=self.train_rows(held_out["eval"]),
            processing_class=tokenizer,
            callbacks=callbacks,
            **self.trainer_kwargs(inputs, wrapped.trained),
        )
        trainer.remove_callback(PrinterCallback)
        if len(trainer.train_dataset) == 0:  # TRL drops examples whose completion truncation removed entirely
            raise ValueError(
                f"max_seq_length={budget_stage.sequence_length(cfg)} leaves no completion token in any of the "
                f"{len(inputs.splits['train'])} training examples (the formatted prompts are longer); raise task.max_seq_length"
            )
        trainer.score_held_out(held_out, cfg.task, cfg.budget.get("eval_batch_size"))
        trainer.rows_per_example = max(1, len(self.completion_columns))
        trainer.scores_by_reward = self.scores_by_reward
        trainer.implicit_reward_beta = self.implicit_reward_beta()
        return TrainerSetup(trainer, {prefix: self.train_rows(split) for prefix, split in held_out.items()})

    def spending(self, inputs: RunInputs, trainer) -> dict[str, Any]:
        """The training examples TRL kept and those truncation left without a completion token."""
        available, used = len(inputs.splits["train"]), len(trainer.train_dataset)
        return {"train_examples": used, "train_examples_dropped_by_truncation": available - used}

    def frozen_models(self, trainer, wrapped: WrappedModels) -> list[Any]:
        """A reference copy TRL holds beside the trained model (DPO's, when it is not a "ref" adapter)."""
        return [getattr(trainer, "ref_model", None)]

    def samples(self, trainer) -> list[dict[str, Any]]:
        return trainer.samples_by_split()


def _measured(trainer_class: type) -> type:
    """The TRL trainer with the data-order fingerprint, the memory windows and the shared generation metrics."""
    bases = (EvaluationWindows, DataOrderFingerprint, TrainingFlops, GenerationEvalMixin, trainer_class)
    return type(f"Measured{trainer_class.__name__}", bases, {})
