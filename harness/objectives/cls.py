"""Classification objective: transformers' Trainer on a sequence-classification model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, EvalPrediction, PrinterCallback, Trainer, TrainingArguments

from harness import budget as budget_stage
from harness import data, methods, models
from harness.metrics import load_metric
from harness.objectives.base import (
    FittedRun,
    Objective,
    RunInputs,
    record_parameters,
    train_and_evaluate,
    training_arguments,
)

# Where a batch's token ids are, by trainer: Trainer/SFT/reward, DPO's pairs, TRL's prompt tensors.
ORDER_KEYS = ("input_ids", "prompt_input_ids", "prompt_ids")


class DataOrderFingerprint:
    """Trainer mixin: a SHA-256 over the token ids of every training batch, in order.

    Two runs with equal fingerprints trained on the same examples in the same
    order; the record carries it so a reader can check that methods compared
    in a table really saw the same data. It also counts the examples trained on.
    """

    rows_per_example = 1  # preference trainers stack chosen and rejected: two rows per pair

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_order_hash = hashlib.sha256()
        self.samples_trained = 0

    def training_step(self, model, inputs, *args, **kwargs):
        if isinstance(inputs, list):  # online RL trainers get raw prompt rows and generate from them
            self.data_order_hash.update(json.dumps([row.get("prompt") for row in inputs], default=str).encode())
            self.samples_trained += len(inputs)
        else:
            ids = next((inputs[k] for k in ORDER_KEYS if k in inputs), None)
            if ids is not None:
                self.data_order_hash.update(ids.detach().cpu().numpy().tobytes())
                self.samples_trained += int(ids.shape[0]) // self.rows_per_example
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
        quantization = cfg.method.get("quantization") or cfg.model.get("quantization")
        model = models.load_classifier(cfg.model, self.num_labels(cfg), quantization, cfg.seed)
        model = methods.apply_method(model, inputs.method_object, inputs.context)
        record_parameters(model, inputs.record)
        callback = budget_stage.BudgetCallback(cfg.budget)
        args = training_arguments(cfg, str(inputs.work_dir / "trainer"), inputs.precision, inputs.device)
        trainer = build_trainer(model, tokenizer, tokenized["train"], validation, args, cfg.task, [callback, *inputs.callbacks])

        def evaluate():
            validation_metrics = trainer.evaluate(validation, metric_key_prefix="eval")
            test_metrics = {} if cfg.get("role") == "trial" else trainer.evaluate(test, metric_key_prefix="test")
            return validation_metrics, test_metrics

        return train_and_evaluate(trainer, callback, inputs.device, evaluate)

