"""One run: validate, load, wrap, train, evaluate, measure, record.

:func:`prepare` does every check that needs no model weights and raises
:class:`~harness.config.ConfigError` on bad input. :func:`execute` then
trains; any exception from there on becomes a ``failed`` record carrying the
error and the tail of its traceback, so a sweep can go on and nothing already
written is lost.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from omegaconf import DictConfig, OmegaConf

from harness import budget as budget_stage
from harness import data, measure, methods, models, records
from harness.config import check_target_modules, primary_metric, validate
from harness.objectives.base import RunInputs

TRACEBACK_TAIL_LINES = 30
# Messages of allocators that ran out (torch's CPU allocator raises RuntimeError, not MemoryError).
OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


class RunFailed(RuntimeError):
    """Training or evaluation raised; the failed record has been written and travels with the error."""

    def __init__(self, record: dict[str, Any]):
        super().__init__(record["error"])
        self.record = record


@dataclass
class PreparedRun:
    """Everything known before the model loads."""

    cfg: DictConfig
    run_id: str
    record_path: Path
    splits: DatasetDict
    method_object: Any
    context: methods.MethodContext
    objective: Any
    device: torch.device
    identity: dict[str, Any]  # what the config leaves open and this run settles (part of run_id)

    @property
    def precision(self) -> str:
        return self.identity["precision"]


def build_objective(cfg: DictConfig):
    """The objective object from its YAML (Hydra instantiate), checked against the task."""
    from hydra.utils import instantiate

    objective = instantiate(cfg.objective)
    objective.check(cfg)
    return objective


def prepare(cfg: DictConfig) -> PreparedRun:
    """All checks that need no weights: config values, objective, data columns, target modules."""
    validate(cfg)
    objective = build_objective(cfg)
    splits = data.load_task(cfg.task)
    num_labels = objective.num_labels(cfg)
    scorer = objective.head == "sequence_classification"
    context = methods.MethodContext(
        head_modules=list(cfg.model.head_modules) if scorer else [],
        peft_task_type=objective.peft_task_type,
        adapter_sites=OmegaConf.to_container(cfg.model.adapter_sites)
        if cfg.model.get("adapter_sites") is not None
        else {},
        total_steps=objective.optimizer_steps(cfg.budget),
        quantized=models.quantization_of(cfg) is not None,
    )
    method_object = methods.build_method(cfg.method, context)
    methods.check_method(method_object, context)
    architecture = models.skeleton(cfg.model, num_labels, objective.head)
    names = [name for name, _ in architecture.named_modules()]
    methods.check_trains_something(architecture, method_object, context, cfg.method.name)
    for key in ("target_modules", "feedforward_modules"):
        methods_target = getattr(method_object, key, None)
        if isinstance(methods_target, set | frozenset):
            methods_target = sorted(methods_target)
        check_target_modules(names, methods_target, f"method.{key}")
    device = _device()
    identity = settled_identity(cfg, device, splits)
    rid = records.run_id(cfg, identity)
    return PreparedRun(
        cfg, rid, records.record_path(cfg.results_dir, rid), splits, method_object, context, objective, device, identity
    )


def settled_identity(cfg: DictConfig, device: torch.device, splits: DatasetDict) -> dict[str, Any]:
    """What makes two runs of one config different experiments: the device type, the precision ``auto``
    resolves to there (bf16 on a CUDA device that has it, else fp32), and the data's content hash (a
    generator, a Hub revision or a local file can change under the same config)."""
    return {
        "device_type": device.type,
        "precision": _precision(cfg.train.precision, device),
        "data_sha256": data.fingerprint(splits),
    }


def _device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _save_trained(model, folder: Path) -> int:
    """Save what the method trained (adapter + head for PEFT, else the trainable tensors) and return its size."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if methods.is_peft_model(model):
        model.save_pretrained(folder)
    else:
        trained = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(folder / "trained.safetensors"))
    return measure.folder_bytes(folder)


def _strip_prefix(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    skip = ("runtime", "samples_per_second", "steps_per_second", "epoch")
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix) and not k.endswith(skip)}


def _base_record(prepared: PreparedRun) -> dict[str, Any]:
    cfg = prepared.cfg
    return {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": prepared.run_id,
        "status": None,
        "error": None,
        "started_at": datetime.now(timezone.utc).isoformat(),
        "model": cfg.model.name,
        "task": cfg.task.name,
        "method": cfg.method.name,
        "budget": cfg.budget.name,
        "objective": cfg.objective.name,
        "seed": cfg.seed,
        "role": cfg.get("role", "run"),
        "tuning": _tuning_fields(cfg),
        "identity": prepared.identity,
        "metrics": {},
        "primary_metric": primary_metric(cfg),
        "params": {},
        "memory": {},
        "rank_allocation": None,
        "time": {},
        "compute": {},
        "learning_curve": [],
        "training": {},
        "data_sha256": prepared.identity["data_sha256"],
        "config": records.identity_config(cfg),
        "environment": {},
    }


def _tuning_fields(cfg: DictConfig) -> dict[str, Any] | None:
    """Study, trial number and sampled values of a trial or final; None for a plain run."""
    tuning = cfg.get("tuning")
    if cfg.get("role", "run") == "run" or tuning is None:
        return None
    params = tuning.get("params")
    return {
        "study": tuning.get("study"),
        "trial": tuning.get("trial"),
        "params": OmegaConf.to_container(params) if params is not None else None,
    }


def error_kind(error: BaseException) -> str:
    """out_of_memory | non_finite_loss | exception: lets a report tell divergence and OOM from bugs."""
    if isinstance(error, budget_stage.NonFiniteLossError):
        return "non_finite_loss"
    if isinstance(error, MemoryError | torch.OutOfMemoryError) or any(
        marker in str(error).lower() for marker in OUT_OF_MEMORY_MARKERS
    ):
        return "out_of_memory"
    return "exception"


def _train_and_measure(prepared: PreparedRun, record: dict[str, Any], work_dir: Path, callbacks: list[Any]) -> None:
    cfg, device, precision = prepared.cfg, prepared.device, prepared.precision
    record["environment"] = measure.environment(device)
    inputs = RunInputs(
        cfg, prepared.splits, prepared.method_object, prepared.context, record, work_dir, device, precision, callbacks
    )
    fitted = prepared.objective.fit(inputs)
    trainer, args = fitted.trainer, fitted.trainer.args
    spent = {
        **fitted.budget.spent(trainer.state),
        "samples": trainer.samples_trained,
        "data_order_sha256": trainer.data_order_fingerprint(),
        **fitted.compute,
    }
    artifact_dir = Path(cfg.results_dir) / "artifacts" / prepared.run_id if cfg.keep_artifacts else work_dir / "trained"
    settings = {
        "optimizer": cfg.train.optimizer,
        "precision": precision,
        "batch_size": cfg.budget.batch_size,
        "max_seq_length": budget_stage.sequence_length(cfg),
    }
    record.update(
        metrics={
            "validation": _strip_prefix(fitted.validation_metrics, "eval_"),
            "test": _strip_prefix(fitted.test_metrics, "test_"),
        },
        memory={
            **fitted.memory.as_record(),
            "device": device.type,
            "gpu": record["environment"]["gpu"],
            **_weights(record["memory"], trainer.model, fitted.frozen_models),
            "quantization": models.quantization_of(cfg),
            **settings,
        },
        time={
            "train_seconds": spent["seconds"],
            "eval_seconds": fitted.eval_clock.seconds + spent["eval_seconds_during_training"],
            "final_eval_seconds": fitted.eval_clock.seconds,
            "train_tokens_per_second": spent["train_tokens"] / spent["seconds"] if spent["seconds"] else None,
        },
        compute=spent,
        learning_curve=fitted.budget.learning_curve,
        rank_allocation=methods.rank_allocation(
            trainer.model, _allocator_steps(trainer), prepared.objective.loss_from_model
        ),
        trained_bytes=_save_trained(trainer.model, artifact_dir),
        artifact_dir=str(artifact_dir) if cfg.keep_artifacts else None,
        training={
            **settings,
            "learning_rate": cfg.method.lr,
            "weight_decay": cfg.train.weight_decay,
            "lr_scheduler": args.lr_scheduler_type,
            "warmup_steps": args.warmup_steps,
            "max_grad_norm": cfg.train.max_grad_norm,
            "data_seed": args.data_seed,
        },
    )
    record["samples_file"] = _write_samples(prepared, fitted.samples)
    name = record["primary_metric"]["name"]
    record["primary_metric"].update(
        validation=record["metrics"]["validation"].get(name), test=record["metrics"]["test"].get(name)
    )


def _allocator_steps(trainer) -> int | None:
    """Optimizer steps AdaLoRA's allocator saw (None when the run had no allocator)."""
    allocators = [c for c in trainer.callback_handler.callbacks if isinstance(c, methods.RankAllocation)]
    return allocators[0].optimizer_steps if allocators else None


def _weights(at_wrap: dict[str, int], trained, frozen_models: list[Any]) -> dict[str, int]:
    """The evaluated model's bytes and an auxiliary model's (taken when the method wrapped them), and the
    frozen copies held beside them: references, reward models, TRL's "ref" adapter (all the rest)."""
    held = measure.tensor_bytes(trained, *frozen_models)
    own = at_wrap["weights_bytes"] + at_wrap["auxiliary_weights_bytes"]
    return {**at_wrap, "frozen_models_bytes": max(0, held - own), "held_weights_bytes": held}


def _write_samples(prepared: PreparedRun, samples: list[dict[str, Any]]) -> str | None:
    """Prompts, generations and scores beside the record (``<run_id>.samples.jsonl``), for reading what was scored."""
    if not samples:
        return None
    path = prepared.record_path.with_suffix(".samples.jsonl")
    records.write_lines(path, [json.dumps(sample, ensure_ascii=False) for sample in samples])
    return path.name


def execute(prepared: PreparedRun, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train and record; a failure is written as a failed record and re-raised as RunFailed.

    ``callbacks`` are extra Trainer callbacks (the study's trial reporter);
    one whose ``pruned`` is true after training makes the record ``pruned``.
    """
    callbacks = list(callbacks or [])
    record = _base_record(prepared)
    work_dir = Path(tempfile.mkdtemp(prefix=f"harness-{prepared.run_id}-"))
    try:
        _train_and_measure(prepared, record, work_dir, callbacks)
    except Exception as error:  # every failure becomes a record; Ctrl-C (BaseException) writes none
        record.update(
            status="failed",
            error=f"{type(error).__name__}: {error}",
            error_kind=error_kind(error),
            traceback=traceback.format_exc().splitlines()[-TRACEBACK_TAIL_LINES:],
            finished_at=datetime.now(timezone.utc).isoformat(),
        )
        records.write_record(prepared.record_path, record)
        raise RunFailed(record) from error
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    pruned_at = next((c.pruned_at_step for c in callbacks if getattr(c, "pruned", False)), None)
    record.update(
        status="pruned" if pruned_at is not None else "success",
        pruned_at_step=pruned_at,
        finished_at=datetime.now(timezone.utc).isoformat(),
    )
    records.write_record(prepared.record_path, record)
    return record
