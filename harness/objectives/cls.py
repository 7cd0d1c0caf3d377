"""Classification objective: transformers' Trainer on a sequence-classification model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, EvalPrediction, PrinterCallback, Trainer, TrainingArguments

from harness import budget as budget_stage
from harness import data, distributed, models
from harness.metrics import load_metric
from harness.objectives.base import (
    HELD_OUT_SPLITS,
    DataOrderFingerprint,
    EvaluationWindows,
    Objective,
    RunInputs,
    TrainerSetup,
    WrappedModels,
    training_arguments,
)
from harness.utilisation import TrainingFlops


class ClassificationTrainer(EvaluationWindows, DataOrderFingerprint, TrainingFlops, Trainer):
    """transformers' Trainer, fingerprinting its data order, counting its FLOPs, measuring its evaluations apart."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is the mean over a batch, and gradient accumulation must keep it so: the Trainer then
        # averages the micro-batches' means. Left on, the Trainer passes ``num_items_in_batch`` to any model
        # whose forward takes **kwargs and trusts it to normalise over the whole accumulated batch; BERT's
        # classifier ignores it, and its accumulated loss (and gradient) would be the micro-batches' sum.
        self.model_accepts_loss_kwargs = False

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """On several processes, the loss is the mean cross-entropy of the gathered logits, as the metrics are.

        Accelerate pads the last evaluation batches so that every rank gets one (repeating rows from the start)
        and ``gather_for_metrics`` drops the repeats from the logits and labels; the Trainer's loss is the mean of
        per-batch means, and a padded batch's mean counts the repeats. The logits' cross-entropy counts every
        example once, as one process does.
        """
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        key = f"{metric_key_prefix}_loss"
        if distributed.world_size() > 1 and key in output.metrics and output.label_ids is not None:
            logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            loss = torch.nn.functional.cross_entropy(
                torch.as_tensor(np.asarray(logits), dtype=torch.float32), torch.as_tensor(np.asarray(output.label_ids))
            )
            output.metrics[key] = loss.item()
        return output


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


def classification_trainer(
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


def by_length(split):
    """The rows longest first: a batch then pads to lengths alike, so evaluation multiplies few padding positions.
    The same capped rows, scored by order-free metrics (accuracy, F1, MCC, the mean loss), so no figure moves."""
    lengths = [len(ids) for ids in split["input_ids"]]
    return split.select(sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)))


class ClassificationObjective(Objective):
    """A new classification head on the encoder (or decoder), trained with cross-entropy."""

    head = "sequence_classification"
    peft_task_type = "SEQ_CLS"
    runs_across_processes = True  # tests/test_distributed.py: 2 processes train and score as 1 does

    def num_labels(self, cfg: DictConfig) -> int:
        return len(cfg.task.label_names)

    def retention_probe(self, inputs: RunInputs):
        """The retention task's test split, scored by the final model when ``retention_task`` is set."""
        from harness.forgetting import SecondTaskProbe

        second = inputs.retention.second_task if inputs.retention is not None else None
        return SecondTaskProbe(second, inputs.cfg, inputs.device) if second is not None else None

    def load_model(self, cfg, quantization: str | None):
        return models.load_classifier(cfg.model, self.num_labels(cfg), quantization, cfg.seed)

    def build_trainer(
        self, inputs: RunInputs, wrapped: WrappedModels, held_out: dict[str, Any], callbacks: list[Any]
    ) -> TrainerSetup:
        """The held-out splits scored tokenized as the training split is, capped as ``held_out`` is."""
        cfg = inputs.cfg
        tokenizer = models.load_tokenizer(cfg.model)
        tokenized = data.tokenize(inputs.splits, tokenizer, budget_stage.sequence_length(cfg), inputs.data_sha256)
        cap = cfg.budget.get("max_eval_samples")
        evaluation_sets = {
            prefix: by_length(data.cap_eval(tokenized[HELD_OUT_SPLITS[prefix]], cap)) for prefix in held_out
        }
        args = training_arguments(cfg, str(inputs.work_dir / "trainer"), inputs.precision, inputs.device)
        trainer = classification_trainer(
            wrapped.trained, tokenizer, tokenized["train"], evaluation_sets["eval"], args, cfg.task, callbacks
        )
        return TrainerSetup(trainer, evaluation_sets)
