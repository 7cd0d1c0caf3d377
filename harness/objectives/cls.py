"""Classification objective: transformers' Trainer on a sequence-classification model."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, EvalPrediction, PrinterCallback, Trainer, TrainingArguments

from harness.metrics import load_metric


class DataOrderFingerprint:
    """Trainer mixin: a SHA-256 over the token ids of every training batch, in order.

    Two runs with equal fingerprints trained on the same examples in the same
    order; the record carries it so a reader can check that methods compared
    in a table really saw the same data. It also counts the examples trained on.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_order_hash = hashlib.sha256()
        self.samples_trained = 0

    def training_step(self, model, inputs, *args, **kwargs):
        self.data_order_hash.update(inputs["input_ids"].detach().cpu().numpy().tobytes())
        self.samples_trained += int(inputs["input_ids"].shape[0])
        return super().training_step(model, inputs, *args, **kwargs)

    def data_order_fingerprint(self) -> str | None:
        return self.data_order_hash.hexdigest() if self.samples_trained else None


class ClassificationTrainer(DataOrderFingerprint, Trainer):
    """transformers' Trainer, fingerprinting its data order."""


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
