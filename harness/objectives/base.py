"""What every objective shares: the Trainer settings, the one measured fit sequence, its typed result.

An objective (conf/objective/*.yaml, ``_target_`` one of the classes in this
package) says which task types it trains on, what the model is loaded as
(a scorer with a new head, or a generator), and how it trains. Everything
that must be equal across objectives for a comparison to be fair lives here:
the shared training settings (only the learning rate is the method's), the
held-out splits (a tuning trial never sees the test split), the budget
callback, and :meth:`Objective.fit`, the one train-then-evaluate-then-measure
sequence, which objectives shape through hooks and never rewrite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from harness import budget as budget_stage
from harness import distributed, measure, methods, models, tracking, utilisation
from harness.data import cap_eval

# Evaluation prefixes (the Trainer's ``metric_key_prefix``) and the splits they score, in evaluation order.
HELD_OUT_SPLITS = {"eval": "validation", "test": "test"}
# Trainer metrics that time an evaluation rather than score it: the record keeps its own clocks.
TIMING_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch")


@dataclass(frozen=True)
class ModelSizes:
    """Parameters and weight bytes of the models as the method wrapped them, taken before a trainer adds
    anything (TRL's frozen "ref" adapter), so that they say what the method made and nothing else."""

    params: dict[str, Any]  # measure.parameter_counts: method, head, auxiliary, total, trainable, method_percent
    weights_bytes: int  # the evaluated model
    auxiliary_weights_bytes: int  # a model trained beside it (PPO's value model); 0 when there is none


@dataclass(frozen=True)
class Spending:
    """What training consumed, whichever budget rule stopped it (the record's ``compute``)."""

    steps: int
    train_tokens: int  # non-padding tokens fed forward
    seconds: float  # training time, periodic evaluation excluded
    eval_seconds_during_training: float
    stop_reason: str
    samples: int  # examples trained on, in the objective's unit (pairs, prompts, completions)
    data_order_sha256: str | None  # see DataOrderFingerprint; None when nothing trained
    utilisation: dict[str, Any] = field(default_factory=dict)  # FLOPs and MFU (harness.utilisation)
    by_objective: dict[str, Any] = field(default_factory=dict)  # rollout tokens, reward-model passes, ...


@dataclass(frozen=True)
class TrainerSchedule:
    """What the trainer resolved from the config: its learning-rate schedule and its data-order seed."""

    lr_scheduler: str
    warmup_steps: int
    data_seed: int | None


@dataclass(frozen=True)
class FittedRun:
    """Everything a record says about one fit, typed, so that :func:`harness.records.fitted_fields` alone
    builds the record and nothing outside the objective reads a trainer."""

    model: nn.Module  # the trained model as the trainer holds it (saved as the run's artifact)
    sizes: ModelSizes
    held_weights_bytes: int  # the trained model and every frozen model held beside it, once each
    metrics: dict[str, dict[str, float]]  # by split (validation, test), prefix and timings stripped; test {} in a trial
    memory: dict[str, Any]  # peaks per phase (measure.MemoryMeter.as_record)
    final_eval_seconds: float  # the evaluations after training
    spent: Spending
    learning_curve: list[dict[str, Any]]
    rank_allocation: dict[str, Any] | None  # AdaLoRA's final ranks (methods.rank_allocation); None for other methods
    schedule: TrainerSchedule
    samples: list[dict[str, Any]] = field(default_factory=list)  # generations kept beside the record
    distributed: dict[str, Any] = field(default_factory=dict)  # backend, hosts, each process's batch (see fit)
    forgetting: dict[str, Any] | None = None  # general text scored before and after (harness.forgetting)
    retention: dict[str, Any] | None = None  # a second task's test split scored after (encoder runs)


def _ignore(told: Any) -> None:
    """The default listener (for sizes, for the starting model): nobody needs them before the fit returns."""


@dataclass
class RunInputs:
    """What an objective's ``fit`` receives from the run stage."""

    cfg: DictConfig
    splits: Any
    method_object: Any
    context: Any
    work_dir: Path
    device: torch.device
    precision: str
    callbacks: list[Any]
    data_sha256: dict[str, str] | None = None  # the splits' content hash (keys caches of derived data)
    retention: Any = None  # harness.forgetting.RetentionInputs: what is scored before and after training
    on_wrapped: Callable[[ModelSizes], None] = _ignore  # told the sizes at once: a run failing later still has them
    on_loaded: Callable[[nn.Module], None] = _ignore  # told the starting model as loaded, before the method wraps it


@dataclass(frozen=True)
class WrappedModels:
    """The models a run trains, as the method wrapped them (an objective may add fields for its trainer)."""

    trained: nn.Module  # what the optimizer updates (PPO: policy and value model as one module)
    evaluated: nn.Module  # whose quality and size the record reports (PPO: the policy)
    head_modules: list[str]  # the task head's module names, counted apart from the method's parameters
    auxiliary: nn.Module | None = None  # trained beside the evaluated model (PPO's value model)


@dataclass(frozen=True)
class TrainerSetup:
    """A trainer ready to train, and the rows each final evaluation scores, by evaluation prefix."""

    trainer: Any
    evaluation_sets: dict[str, Any]


# Where a batch's token ids are, by trainer (Trainer/SFT/reward/DPO, TRL's prompt tensors), and the mask of their real tokens.
ORDER_KEYS = {"input_ids": "attention_mask", "prompt_input_ids": "prompt_attention_mask", "prompt_ids": "prompt_mask"}


def example_tokens(ids: torch.Tensor, mask: torch.Tensor | None, rows_per_example: int) -> bytes:
    """A batch's real tokens, example by example, each row prefixed by its length.

    Padding and the cut into micro-batches (``budget.micro_batch_size``) leave it
    unchanged, so a run with gradient accumulation that trains on the same examples
    in the same order as one without gets the same fingerprint. Preference batches
    stack every chosen row before every rejected one: an example's rows lie
    ``len(ids) / rows_per_example`` apart.
    """
    ids = ids.detach().cpu()
    real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
    order = torch.arange(ids.shape[0]).view(rows_per_example, -1).T.flatten()
    content = bytearray()
    for row in order.tolist():
        tokens = ids[row][real[row]]
        content += len(tokens).to_bytes(4, "little") + tokens.numpy().tobytes()
    return bytes(content)


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
            if self._generates_now():
                self.note_batch(json.dumps([row.get("prompt") for row in inputs], default=str).encode(), len(inputs))
        else:
            key = next((k for k in ORDER_KEYS if k in inputs), None)
            if key is not None:
                ids = inputs[key]
                content = example_tokens(ids, inputs.get(ORDER_KEYS[key]), self.rows_per_example)
                self.note_batch(content, int(ids.shape[0]) // self.rows_per_example)
        return super().training_step(model, inputs, *args, **kwargs)

    def _generates_now(self) -> bool:
        """TRL's online trainers hand their whole generation batch to each accumulation step (each trains on a
        slice of it) and generate anew every ``steps_per_generation × num_iterations`` steps: the batch is
        noted once, when it is generated, or accumulation would count its examples once per slice."""
        every = (getattr(self.args, "steps_per_generation", None) or 1) * getattr(self, "num_iterations", 1)
        return getattr(self, "_step", 0) % every == 0

    def note_batch(self, content: bytes, examples: int) -> None:
        """Fold one training batch into the fingerprint (a loop of its own, such as PPO's, calls this directly).

        On several processes every rank's batch of this pass is folded in, in rank order: accelerate hands rank
        ``r`` batch ``k * world_size + r`` of the seeded order, so the fingerprint (and the count) is the one a
        single process computes on the same global batches.
        """
        for part, count in distributed.gather((content, examples)):
            self.data_order_hash.update(part)
            self.samples_trained += count

    def data_order_fingerprint(self) -> str | None:
        return self.data_order_hash.hexdigest() if self.samples_trained else None


class EvaluationWindows:
    """Trainer mixin: every ``evaluate`` is an evaluation window of the run's memory meter.

    Periodic evaluation runs inside ``train``; without this, a pass over
    held-out data could set the run's *training* peak. ``memory_meter`` is set
    by :meth:`Objective.fit`; a trainer whose ``evaluate`` is its own
    (PPO's) wraps it in :meth:`evaluation_window` itself.
    """

    memory_meter: measure.MemoryMeter | None = None

    @contextmanager
    def evaluation_window(self):
        """The meter's evaluation phase, scored on the task's loss alone (no AdaLoRA penalty), with the
        budget's training clock paused for all of it."""
        with self._training_clock_paused(), methods.task_loss_only(self.model):
            if self.memory_meter is None:
                yield
                return
            with self.memory_meter.phase_of("eval"):
                yield

    def _training_clock_paused(self):
        budgets = [c for c in self.callback_handler.callbacks if isinstance(c, budget_stage.BudgetCallback)]
        return budgets[0].paused() if budgets else nullcontext()

    def evaluate(self, *args, **kwargs):
        with self.evaluation_window():
            return super().evaluate(*args, **kwargs)


class Objective(ABC):
    """Base of every objective: :meth:`fit` is the run, the hooks below are what differs between objectives."""

    head: str = "causal_lm"  # or "sequence_classification"
    peft_task_type: str = "CAUSAL_LM"
    loss_from_model: bool = True  # the trainer's loss is the model's own (so PEFT can add terms to it, as AdaLoRA does)
    # Trains on several processes as on one (harness.distributed), shown by a test that compares the two runs;
    # an objective without such a test is refused there rather than trusted.
    runs_across_processes: bool = False

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

    def fit(self, inputs: RunInputs) -> FittedRun:
        """Load and wrap, count, train under the budget, evaluate the held-out splits, measure.

        Written once for every objective, so that every figure is taken at the same
        point of every run: sizes before a trainer adds anything, memory per phase,
        the final evaluations timed apart from training. Hooks say what differs.
        """
        probe = self.retention_probe(inputs)
        if probe is not None:  # scores the starting model as it loads, before any trainer exists
            inputs = dataclasses.replace(inputs, on_loaded=probe.before)
        wrapped = self.load_models(inputs)
        sizes = model_sizes(wrapped)
        inputs.on_wrapped(sizes)
        budget = budget_stage.BudgetCallback(inputs.cfg.budget)
        callbacks = [budget, *methods.method_callbacks(wrapped.trained), *inputs.callbacks]
        held_out = held_out_splits(inputs.cfg, inputs.splits)
        setup = self.build_trainer(inputs, wrapped, held_out, callbacks)
        meter, eval_clock, evaluated = self._train_and_evaluate(setup, list(held_out), inputs.device, budget)
        trainer = setup.trainer
        retained = _after_training(probe, wrapped.evaluated, trainer) if probe is not None else None
        frozen = [model for model in self.frozen_models(trainer, wrapped) if model is not None]
        return FittedRun(
            model=trainer.model,
            sizes=sizes,
            held_weights_bytes=measure.tensor_bytes(trainer.model, *frozen),
            metrics={
                split: prefixed_scores(evaluated.get(prefix, {}), prefix) for prefix, split in HELD_OUT_SPLITS.items()
            },
            memory=distributed.combine_memory(distributed.gather(meter.as_record())),
            final_eval_seconds=eval_clock.seconds,
            spent=_spending(budget, trainer, self.spending(inputs, trainer), inputs),
            learning_curve=budget.learning_curve,
            rank_allocation=methods.rank_allocation(trainer.model, _allocator_steps(callbacks), self.loss_from_model),
            schedule=TrainerSchedule(trainer.args.lr_scheduler_type, trainer.args.warmup_steps, trainer.args.data_seed),
            samples=self.samples(trainer),
            distributed=_process_layout(trainer),
            forgetting=retained if self.head == "causal_lm" else None,
            retention=retained if self.head != "causal_lm" else None,
        )

    def _train_and_evaluate(
        self, setup: TrainerSetup, prefixes: list[str], device: torch.device, budget: budget_stage.BudgetCallback
    ) -> tuple[measure.MemoryMeter, measure.Stopwatch, dict[str, dict[str, Any]]]:
        """Train, then time the final evaluations of ``prefixes`` (those :func:`held_out_splits` allows,
        whatever sets the hook prepared), with memory measured per phase.

        The meter's baseline is taken as training starts; evaluations (periodic
        ones inside ``train`` and the final ones) are its evaluation windows, the
        rest of ``train`` its training window. A validation pass that training
        already ran at its last step is not run again (:func:`validated_at_end`).
        """
        trainer = setup.trainer
        meter = trainer.memory_meter = measure.MemoryMeter(device)
        meter.start()
        try:
            trainer.train()
            meter.enter(None)  # training is over; only the evaluation windows below count
            with measure.Stopwatch(device) as eval_clock:
                evaluated = {
                    prefix: validated_at_end(budget.learning_curve, trainer.state.global_step, prefix)
                    or self.evaluate_split(trainer, prefix, setup.evaluation_sets[prefix])
                    for prefix in prefixes
                }
        finally:
            meter.stop()
            budget.progress.close()  # a run that raised mid-training leaves no bar drawn over the console
        return meter, eval_clock, evaluated

    def retention_probe(self, inputs: RunInputs):
        """Hook: what scores the model before and after training beyond its task. A causal LM is scored on the
        general text (``forgetting``); other heads have nothing to score by default (see the classifier's)."""
        from harness.forgetting import ForgettingProbe

        general = inputs.retention.general_text if inputs.retention is not None else None
        if self.head != "causal_lm" or general is None:
            return None
        return ForgettingProbe(general, inputs.device)

    def load_models(self, inputs: RunInputs) -> WrappedModels:
        """Hook: the models loaded and wrapped by the method (counted as they are, before any trainer exists).
        By default one model, from :meth:`load_model`, both trained and evaluated."""
        cfg = inputs.cfg
        model = self.load_model(cfg, models.quantization_of(cfg))
        inputs.on_loaded(model)
        model = methods.apply_method(model, inputs.method_object, inputs.context)
        return WrappedModels(trained=model, evaluated=model, head_modules=inputs.context.head_modules)

    @abstractmethod
    def load_model(self, cfg: DictConfig, quantization: str | None) -> nn.Module:
        """Hook: the base model this objective trains, before the method wraps it."""

    @abstractmethod
    def build_trainer(
        self, inputs: RunInputs, wrapped: WrappedModels, held_out: dict[str, Any], callbacks: list[Any]
    ) -> TrainerSetup:
        """Hook: the trainer, given ``callbacks``, and what each held-out split (``held_out``, raw rows by
        evaluation prefix, the test split absent in a trial) is scored on after training."""

    def evaluate_split(self, trainer: Any, prefix: str, rows: Any) -> dict[str, Any]:
        """Hook: one final evaluation, its metrics keyed ``<prefix>_<name>`` as the Trainer keys them."""
        return trainer.evaluate(rows, metric_key_prefix=prefix)

    def spending(self, inputs: RunInputs, trainer: Any) -> dict[str, Any]:
        """Hook: what this objective spends beyond steps and tokens (rollout tokens, reward-model passes)."""
        return {}

    def frozen_models(self, trainer: Any, wrapped: WrappedModels) -> list[Any]:
        """Hook: models held beside the trained one (a reference copy, a reward model): their weights count as memory."""
        return []

    def samples(self, trainer: Any) -> list[dict[str, Any]]:
        """Hook: generations to keep beside the record (none for a scorer)."""
        return []


def _after_training(probe: Any, model: nn.Module, trainer: Any) -> dict[str, Any]:
    """The probe's after-training figures; a failure there (out of memory on a long text) is recorded in the
    block instead of failing a run whose training and evaluation are done."""
    try:
        return probe.after(model, trainer)
    except Exception as error:  # a side measurement failing is its block's failure, not the run's
        if distributed.world_size() > 1:
            raise  # one rank carrying on past a failed collective would leave the others waiting in it
        return {"error": f"{type(error).__name__}: {error}"}


def validated_at_end(curve: list[dict[str, Any]], final_step: int, prefix: str) -> dict[str, Any] | None:
    """The periodic validation pass at the step training ended on, when there was one (steps a multiple of
    ``eval_steps``, a pruned trial): the same weights on the same rows, so a final pass would repeat it to the
    digit. None for the test split, which training never scores, and when training ended between evaluations."""
    if prefix != "eval":
        return None
    start = f"{prefix}_"
    scores = {k: v for p in curve if p["step"] == final_step for k, v in p.items() if k.startswith(start)}
    return scores or None


def held_out_splits(cfg: DictConfig, splits) -> dict[str, Any]:
    """The capped validation and test rows by evaluation prefix.

    The one home of the rule that a tuning trial never sees the test split:
    model selection must not, and only the finals' test figures are reported.
    """
    cap = cfg.budget.get("max_eval_samples")
    prefixes = ["eval"] if cfg.get("role") == "trial" else list(HELD_OUT_SPLITS)
    return {prefix: cap_eval(splits[HELD_OUT_SPLITS[prefix]], cap) for prefix in prefixes}


def model_sizes(wrapped: WrappedModels) -> ModelSizes:
    """What the method trains, what the head trains, and the model's size, right after the method wrapped it
    (see :func:`harness.measure.parameter_counts`; 4-bit weights count as logical parameters).

    The weights' bytes are taken here too, before a trainer adds anything (TRL's frozen "ref" adapter):
    ``weights_bytes`` is the evaluated model as the method made it, ``auxiliary_weights_bytes`` a model
    trained beside it (PPO's value model).
    """
    auxiliary = wrapped.auxiliary
    return ModelSizes(
        params=measure.parameter_counts(wrapped.evaluated, wrapped.head_modules, auxiliary),
        weights_bytes=measure.tensor_bytes(wrapped.evaluated),
        auxiliary_weights_bytes=measure.tensor_bytes(auxiliary) if auxiliary is not None else 0,
    )


def prefixed_scores(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """A Trainer's evaluation metrics without their prefix and without the evaluation's own timings."""
    start = f"{prefix}_"
    return {k[len(start) :]: v for k, v in metrics.items() if k.startswith(start) and not k.endswith(TIMING_METRICS)}


def _spending(
    budget: budget_stage.BudgetCallback, trainer: Any, by_objective: dict[str, Any], inputs: RunInputs
) -> Spending:
    """The budget's tally, with the examples trained on and their order (``DataOrderFingerprint``), and the
    FLOPs they cost against the device's peak (``TrainingFlops``; the CPU's peak is measured here, after
    training and evaluation, so that it disturbs neither their clocks nor their memory windows)."""
    spent = budget.spent(trainer.state)
    flops = distributed.combine_flops(distributed.gather(trainer.flop_tally.as_record()))
    return Spending(
        **spent,
        samples=trainer.samples_trained,
        data_order_sha256=trainer.data_order_fingerprint(),
        utilisation={
            **flops,
            **utilisation.utilisation(flops["train_flops"], spent["seconds"], inputs.device, inputs.precision),
        },
        by_objective=by_objective,
    )


def _process_layout(trainer: Any) -> dict[str, Any]:
    """How the run was laid out on its processes: the process group's backend, the machines, and what each
    process took per optimizer step (``budget.batch_size / world_size`` examples in passes of the micro-batch)."""
    accelerator = getattr(trainer, "accelerator", None)
    return {
        "backend": distributed.backend(),
        # what accelerate made of the preset: NO, MULTI_CPU, MULTI_GPU (DDP), FSDP, DEEPSPEED
        "distributed_type": getattr(getattr(accelerator, "distributed_type", None), "value", None),
        "hosts": distributed.hosts(),
        "per_device_train_batch_size": trainer.args.per_device_train_batch_size,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
    }


def _allocator_steps(callbacks: list[Any]) -> int | None:
    """Optimizer steps AdaLoRA's allocator saw (None when the run had no allocator)."""
    allocators = [c for c in callbacks if isinstance(c, methods.RankAllocation)]
    return allocators[0].optimizer_steps if allocators else None


def training_arguments(
    cfg: DictConfig, output_dir: str, precision: str, device: torch.device, config_class=None, **extra
):
    """The Trainer settings every method and objective shares; only the learning rate is the method's.

    ``data_seed`` fixes the sampler so every method sees the same batches in
    the same order. Nothing is dropped: ``dataloader_drop_last`` would also
    drop evaluation examples, so samples are counted as they are trained on.
    TRL's configs subclass TrainingArguments; ``config_class`` picks one and
    ``extra`` carries its own fields (and may override a shared one). Gradient
    checkpointing stays off (TRL turns it on by default) so that memory is
    measured the same way for all.

    ``budget.micro_batch_size`` bounds the examples per forward and backward
    pass, in training and in evaluation; gradients are accumulated so that an
    optimizer step, the unit the budget counts, still sees ``budget.batch_size``
    examples. On several processes (:mod:`harness.distributed`) that is the
    global batch: each process takes ``batch_size / world_size`` of it, and the
    ``distributed`` preset adds its own arguments (backend, FSDP, DeepSpeed).
    """
    from transformers import TrainingArguments

    b, t = cfg.budget, cfg.train
    world = distributed.world_size()
    _override_launcher_precision(precision)
    step_bounded = bool(b.get("max_steps"))
    config_class = config_class or TrainingArguments
    shared = dict(
        output_dir=output_dir,
        max_steps=budget_stage.trainer_max_steps(b),
        per_device_train_batch_size=budget_stage.micro_batch_size(b, world),
        gradient_accumulation_steps=budget_stage.accumulation_steps(b, world),
        per_device_eval_batch_size=budget_stage.micro_batch_size(b, world),
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
        **tracking.trainer_arguments(),  # report_to and run_name of the tracked run in progress (conf/tracking/)
        use_cpu=device.type == "cpu",
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # a NaN loss must reach BudgetCallback and fail the run
        disable_tqdm=True,
        **distributed.trainer_arguments(cfg),
    )
    if config_class is not TrainingArguments:
        shared["gradient_checkpointing"] = False
    return config_class(**{**shared, **extra})


# What accelerate's ACCELERATE_MIXED_PRECISION means for each of the harness's precisions.
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def _override_launcher_precision(precision: str) -> None:
    """``accelerate launch`` exports its config's mixed precision, which the Trainer would take over fp32: the
    run's precision is ``train.precision`` (resolved), however the processes were started."""
    wanted = ACCELERATE_PRECISION[precision]
    if os.environ.get("ACCELERATE_MIXED_PRECISION", wanted) != wanted:
        os.environ["ACCELERATE_MIXED_PRECISION"] = wanted
