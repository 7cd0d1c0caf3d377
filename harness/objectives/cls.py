"""Classification objective: transformers' Trainer on a sequence-classification model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, EvalPrediction, PrinterCallback, Trainer, TrainingArguments

from harness import budget as budget_stage
from harness import data, methods, models
from harness.metrics import load_metric
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


class ClassificationTrainer(EvaluationWindows, DataOrderFingerprint, Trainer):
    """transformers' Trainer, fingerprinting its data order and measuring its evaluations apart."""


def compute_metrics_for(task: DictConfig) -> Callable[[EvalPrediction], dict[str, float]]:
    """Every metric the task lists, computed from argmax predictions."""
    names = [m.name for m in task.metrics]

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = np.asarray(logits).argmax(axis=-1)
        scores: dict[str, float] = {}
        for name in names:
            scores.update(load_metric(name).compute(predictions=predicted, references=prediction.label_ids))
        return scores

    return compute


def build_trainer(
    model, tokenizer, train_data, eval_data, args: TrainingArguments, task: DictConfig, callbacks: list[Any]
) -> Trainer:
    trainer = ClassificationTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_for(task),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the learning curve goes to the record, not stdout
    return trainer


class ClassificationObjective(Objective):
    """A new classification head on the encoder (or decoder), trained with cross-entropy."""

    head = "sequence_classification"
    peft_task_type = "SEQ_CLS"

    def num_labels(self, cfg: DictConfig) -> int:
        return len(cfg.task.label_names)

    def fit(self, inputs: RunInputs) -> FittedRun:
        """Load, wrap, train under the budget, evaluate; parameters are counted before training.

        A tuning trial is not evaluated on the test split: model selection must
        never see it, and only the finals' test figures are reported.
        """
        cfg = inputs.cfg
        tokenizer = models.load_tokenizer(cfg.model)
        tokenized = data.tokenize(inputs.splits, tokenizer, budget_stage.sequence_length(cfg))
        validation = data.cap_eval(tokenized["validation"], cfg.budget.get("max_eval_samples"))
        test = data.cap_eval(tokenized["test"], cfg.budget.get("max_eval_samples"))
        model = models.load_classifier(cfg.model, self.num_labels(cfg), models.quantization_of(cfg), cfg.seed)
        model = methods.apply_method(model, inputs.method_object, inputs.context)
        record_parameters(model, inputs.record, inputs.context.head_modules)
        callback = budget_stage.BudgetCallback(cfg.budget)
        args = training_arguments(cfg, str(inputs.work_dir / "trainer"), inputs.precision, inputs.device)
        callbacks = [callback, *methods.method_callbacks(model), *inputs.callbacks]
        trainer = build_trainer(model, tokenizer, tokenized["train"], validation, args, cfg.task, callbacks)

        def evaluate():
            validation_metrics = trainer.evaluate(validation, metric_key_prefix="eval")
            test_metrics = {} if cfg.get("role") == "trial" else trainer.evaluate(test, metric_key_prefix="test")
            return validation_metrics, test_metrics

        return train_and_evaluate(trainer, callback, inputs.device, evaluate)

