"""Classification objective: transformers' Trainer on a sequence-classification model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, EvalPrediction, Trainer, TrainingArguments

from harness.metrics import load_metric


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
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_for(task),
        callbacks=callbacks,
    )
