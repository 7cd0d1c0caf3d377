"""What every objective shares: the Trainer settings, the measured train-then-evaluate sequence, its result.

An objective (conf/objective/*.yaml, ``_target_`` one of the classes in this
package) says which task types it trains on, what the model is loaded as
(a scorer with a new head, or a generator), and how it trains. Everything
that must be equal across objectives for a comparison to be fair lives here:
the shared training settings (only the learning rate is the method's), the
budget callback, and the same peak-memory and clock measurements around
training and evaluation.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from harness import budget as budget_stage
from harness import measure


@dataclass
class FittedRun:
    """A trained model with what was measured while training and evaluating it."""

    trainer: Any
    budget: budget_stage.BudgetCallback
    memory: measure.MemoryMeter
    eval_clock: measure.Stopwatch
    validation_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    compute: dict[str, Any] = field(default_factory=dict)  # objective-specific spend (rollout tokens, ...)
    samples: list[dict[str, Any]] = field(default_factory=list)  # generations kept beside the record
    frozen_models: list[Any] = field(default_factory=list)  # references and reward models held beside the trained one


@dataclass
class RunInputs:
    """What an objective's ``fit`` receives from the run stage."""

    cfg: DictConfig
    splits: Any
    method_object: Any
    context: Any
    record: dict[str, Any]
    work_dir: Path
    device: torch.device
    precision: str
    callbacks: list[Any]


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
            self.note_batch(json.dumps([row.get("prompt") for row in inputs], default=str).encode(), len(inputs))
        else:
            ids = next((inputs[k] for k in ORDER_KEYS if k in inputs), None)
            if ids is not None:
                self.note_batch(ids.detach().cpu().numpy().tobytes(), int(ids.shape[0]) // self.rows_per_example)
        return super().training_step(model, inputs, *args, **kwargs)

    def note_batch(self, content: bytes, examples: int) -> None:
        """Fold one training batch into the fingerprint (a loop of its own, such as PPO's, calls this directly)."""
        self.data_order_hash.update(content)
        self.samples_trained += examples

    def data_order_fingerprint(self) -> str | None:
        return self.data_order_hash.hexdigest() if self.samples_trained else None


class EvaluationWindows:
    """Trainer mixin: every ``evaluate`` is an evaluation window of the run's memory meter.

    Periodic evaluation runs inside ``train``; without this, a pass over
    held-out data could set the run's *training* peak. ``memory_meter`` is set
    by :func:`train_and_evaluate`; a trainer whose ``evaluate`` is its own
    (PPO's) wraps it in :meth:`evaluation_window` itself.
    """

    memory_meter: measure.MemoryMeter | None = None

    @contextmanager
    def evaluation_window(self):
        if self.memory_meter is None:
            yield
            return
        with self.memory_meter.phase_of("eval"):
            yield

    def evaluate(self, *args, **kwargs):
        with self.evaluation_window():
            return super().evaluate(*args, **kwargs)


class Objective(ABC):
    """Base of every objective; subclasses set the class attributes and implement ``fit``."""

    head: str = "causal_lm"  # or "sequence_classification"
    peft_task_type: str = "CAUSAL_LM"
    loss_from_model: bool = True  # the trainer's loss is the model's own (so PEFT can add terms to it, as AdaLoRA does)

    def __init__(self, name: str, task_types: list[str], **settings: Any):
        self.name = name
        self.task_types = tuple(task_types)  # from the YAML; config.validate checks the task against it
        self.settings = settings

    def check(self, cfg: DictConfig) -> None:  # noqa: B027 - an optional hook: most objectives have no settings
        """The objective's own settings, before any weights load (the task type is checked by config.validate)."""

    def num_labels(self, cfg: DictConfig) -> int:
        return 1

    def optimizer_steps_per_budget_step(self) -> int:
        """How many optimizer steps one budget step holds (PPO updates several times per rollout batch)."""
        return 1

    def optimizer_steps(self, budget: DictConfig) -> int | None:
        """Optimizer steps the budget allows; None when only tokens or seconds bound it."""
        return int(budget.max_steps) * self.optimizer_steps_per_budget_step() if budget.get("max_steps") else None

    @abstractmethod
    def fit(self, inputs: RunInputs) -> FittedRun:
        """Load, wrap, train under the budget and evaluate: the measured run."""


def training_arguments(cfg: DictConfig, output_dir: str, precision: str, device: torch.device, config_class=None, **extra):
    """The Trainer settings every method and objective shares; only the learning rate is the method's.

    ``data_seed`` fixes the sampler so every method sees the same batches in
    the same order. Nothing is dropped: ``dataloader_drop_last`` would also
    drop evaluation examples, so samples are counted as they are trained on.
    TRL's configs subclass TrainingArguments; ``config_class`` picks one and
    ``extra`` carries its own fields. Gradient checkpointing stays off (TRL
    turns it on by default) so that memory is measured the same way for all.
    """
    from transformers import TrainingArguments

    b, t = cfg.budget, cfg.train
    step_bounded = bool(b.get("max_steps"))
    config_class = config_class or TrainingArguments
    shared = dict(
        output_dir=output_dir,
        max_steps=budget_stage.trainer_max_steps(b),
        per_device_train_batch_size=b.batch_size,
        per_device_eval_batch_size=b.batch_size,
        learning_rate=cfg.method.lr,
        weight_decay=t.weight_decay,
        warmup_steps=int(t.warmup_ratio * b.max_steps) if step_bounded else 0,
        lr_scheduler_type=t.lr_scheduler if step_bounded else "constant",
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=cfg.seed,
        data_seed=cfg.seed,
        eval_strategy="steps",
        eval_steps=b.eval_steps,
        eval_on_start=True,
        logging_steps=b.eval_steps,
        save_strategy="no",
        report_to=[],
        use_cpu=device.type == "cpu",
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # a NaN loss must reach BudgetCallback and fail the run
        disable_tqdm=True,
    )
    if config_class is not TrainingArguments:
        shared["gradient_checkpointing"] = False
    return config_class(**shared, **extra)


def train_and_evaluate(trainer, budget: budget_stage.BudgetCallback, device: torch.device, evaluate) -> FittedRun:
    """Train, then time the final evaluations (``evaluate() -> (val, test)``), with memory measured per phase.

    The meter's baseline is taken as training starts; evaluations (periodic
    ones inside ``train`` and the final ones) are its evaluation windows, the
    rest of ``train`` its training window.
    """
    meter = trainer.memory_meter = measure.MemoryMeter(device)
    meter.start()
    try:
        trainer.train()
        meter.enter(None)  # training is over; only the evaluation windows below count
        with measure.Stopwatch(device) as eval_clock:
            validation_metrics, test_metrics = evaluate()
    finally:
        meter.stop()
    return FittedRun(trainer, budget, meter, eval_clock, validation_metrics, test_metrics)


def record_parameters(model, record: dict[str, Any], head_modules: list[str], auxiliary=None) -> None:
    """What the method trains, what the head trains, and the model's size, right after the method wrapped it
    (see :func:`harness.measure.parameter_counts`; 4-bit weights count as logical parameters).

    The weights' bytes are taken here too, before a trainer adds anything (TRL's frozen "ref" adapter):
    ``weights_bytes`` is the evaluated model as the method made it, ``auxiliary_weights_bytes`` a model
    trained beside it (PPO's value model).
    """
    record["params"] = measure.parameter_counts(model, head_modules, auxiliary)
    record["memory"] = {
        "weights_bytes": measure.tensor_bytes(model),
        "auxiliary_weights_bytes": measure.tensor_bytes(auxiliary) if auxiliary is not None else 0,
    }
