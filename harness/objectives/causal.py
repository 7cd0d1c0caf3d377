"""The shared run of every objective trained by a TRL trainer: load, wrap, train, evaluate generations.

Each objective module (sft, reward, dpo) only says which TRL trainer and
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
from harness import methods, models
from harness.objectives.base import (
    DataOrderFingerprint,
    EvaluationWindows,
    FittedRun,
    Objective,
    RunInputs,
    record_parameters,
    train_and_evaluate,
    training_arguments,
)
from harness.objectives.generation import GenerationEvalMixin, as_conversation, held_out_splits


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

    def spent(self) -> dict[str, Any]:
        """Objective-specific compute for the record (rollout tokens, reward-model passes)."""
        return {}

    def frozen_models(self, trainer) -> list[Any]:
        """Models held beside the trained one (a reference copy, a reward model): their weights count as memory."""
        return [getattr(trainer, "ref_model", None)]

    def fit(self, inputs: RunInputs) -> FittedRun:
        cfg = inputs.cfg
        tokenizer = models.load_tokenizer(cfg.model)
        held_out = held_out_splits(cfg, inputs.splits)
        model = methods.apply_method(self.load_model(cfg, models.quantization_of(cfg)), inputs.method_object, inputs.context)
        record_parameters(model, inputs.record, inputs.context.head_modules)
        callback = budget_stage.BudgetCallback(cfg.budget)
        trainer_class, config_class = self.trl_classes()
        args = training_arguments(
            cfg, str(inputs.work_dir / "trainer"), inputs.precision, inputs.device, config_class, **self.config_fields(cfg)
        )
        trainer = _measured(trainer_class)(
            model=model,
            args=args,
            train_dataset=self.train_rows(inputs.splits["train"]),
            eval_dataset=self.train_rows(held_out["eval"]),
            processing_class=tokenizer,
            callbacks=[callback, *methods.method_callbacks(model), *inputs.callbacks],
            **self.trainer_kwargs(inputs, model),
        )
        trainer.remove_callback(PrinterCallback)
        available, used = len(inputs.splits["train"]), len(trainer.train_dataset)
        if used == 0:  # TRL drops examples whose completion truncation removed entirely
            raise ValueError(
                f"max_seq_length={budget_stage.sequence_length(cfg)} leaves no completion token in any of the "
                f"{available} training examples (the formatted prompts are longer); raise task.max_seq_length"
            )
        trainer.score_held_out(held_out, cfg.task)
        trainer.rows_per_example = max(1, len(self.completion_columns))
        trainer.scores_by_reward = self.scores_by_reward
        trainer.implicit_reward_beta = self.implicit_reward_beta()
        eval_rows = {prefix: self.train_rows(split) for prefix, split in held_out.items()}

        def evaluate():
            validation = trainer.evaluate(eval_rows["eval"], metric_key_prefix="eval")
            test = trainer.evaluate(eval_rows["test"], metric_key_prefix="test") if "test" in eval_rows else {}
            return validation, test

        fitted = train_and_evaluate(trainer, callback, inputs.device, evaluate)
        fitted.compute = {"train_examples": used, "train_examples_dropped_by_truncation": available - used, **self.spent()}
        fitted.samples = trainer.samples_by_split()
        fitted.frozen_models = [m for m in self.frozen_models(trainer) if m is not None]
        return fitted


def _measured(trainer_class: type) -> type:
    """The TRL trainer with the data-order fingerprint, the memory windows and the shared generation metrics."""
    bases = (EvaluationWindows, DataOrderFingerprint, GenerationEvalMixin, trainer_class)
    return type(f"Measured{trainer_class.__name__}", bases, {})
