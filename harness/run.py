"""One run: validate, load, wrap, train, evaluate, measure, record.

:func:`prepare` does every check that needs no model weights and raises
:class:`~harness.config.ConfigError` on bad input. :func:`execute` then
trains; any exception from there on becomes a ``failed`` record carrying the
error and the tail of its traceback, so a sweep can go on and nothing already
written is lost.
"""

from __future__ import annotations

import shutil
import tempfile
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from omegaconf import DictConfig

from harness import budget as budget_stage
from harness import data, distributed, export, forgetting, measure, methods, models, records, tracking
from harness.config import ConfigError, check_target_modules, validate
from harness.objectives.base import FittedRun, RunInputs

TRACEBACK_TAIL_LINES = 30
# Messages of allocators that ran out (torch's CPU allocator raises RuntimeError, not MemoryError).
OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


class RunFailed(RuntimeError):
    """Training or evaluation raised; the failed record has been written and travels with the error."""

    def __init__(self, record: dict[str, Any]):
        super().__init__(record["error"])
        self.record = record


class RecordNotWritten(RuntimeError):
    """Not even a failed record could be written (a full disk, a file-size limit): the run has no record.

    Its text is one line naming the record's path and the OS error, for the CLI's ``error:`` line.
    """

    def __init__(self, path: Path, error: OSError):
        super().__init__(f"run record {path} could not be written: {error.strerror or error} ({type(error).__name__})")
        self.path = path


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
    retention: forgetting.RetentionInputs  # what is scored before and after training beyond the task

    @property
    def precision(self) -> str:
        return self.identity["precision"]


def build_objective(cfg: DictConfig):
    """The objective object from its YAML (Hydra instantiate), checked against the task and the processes."""
    from hydra.utils import instantiate

    objective = instantiate(cfg.objective)
    objective.check(cfg)
    world = distributed.planned_world_size(cfg)
    if world > 1 and not objective.runs_across_processes:
        raise ConfigError(
            "objective",
            f"{objective.name!r} runs in one process only (world size here: {world}); the objectives shown to "
            "train on several processes as on one are: cls",
        )
    return objective


def prepare(cfg: DictConfig) -> PreparedRun:
    """All checks that need no weights: config values, objective, data columns, target modules."""
    validate(cfg)
    objective = build_objective(cfg)
    splits, data_sha256 = data.load_fingerprinted(cfg.task)
    num_labels = objective.num_labels(cfg)
    context = methods.method_context(cfg, objective, quantized=models.quantization_of(cfg) is not None)
    method_object = methods.build_method(cfg.method, context)
    methods.check_method(method_object, context)
    models.check_weights(cfg.model)
    architecture = models.skeleton(cfg.model, num_labels, objective.head)
    names = [name for name, _ in architecture.named_modules()]
    methods.check_trains_something(architecture, method_object, context, cfg.method.name)
    for key in ("target_modules", "feedforward_modules"):
        methods_target = getattr(method_object, key, None)
        if isinstance(methods_target, set | frozenset):
            methods_target = sorted(methods_target)
        check_target_modules(names, methods_target, f"method.{key}")
    device = _device()
    distributed.check_device(cfg, device.type)
    retention = forgetting.prepare(cfg, objective.head, cfg.task.type)
    identity = settled_identity(cfg, device, data_sha256) | retention.identity()
    rid = records.run_id(cfg, identity)
    return PreparedRun(
        cfg,
        rid,
        records.record_path(cfg.results_dir, rid),
        splits,
        method_object,
        context,
        objective,
        device,
        identity,
        retention,
    )


def settled_identity(cfg: DictConfig, device: torch.device, data_sha256: dict[str, str]) -> dict[str, Any]:
    """What makes two runs of one config different experiments: the device type, the precision ``auto``
    resolves to there (bf16 on a CUDA device that has it, else fp32), and the data's content hash (a
    generator, a Hub revision or a local file can change under the same config)."""
    return {
        "device_type": device.type,
        "precision": _precision(cfg.train.precision, device),
        "data_sha256": data_sha256,
    }


def _device() -> torch.device:
    """This process's device: on several processes each rank has its own GPU (its LOCAL_RANK)."""
    return torch.device("cuda", distributed.local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def _precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


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
    """Fit, keep what trained and what was generated, and fill the record from the fitted run.

    The record is filled as the run goes (environment first, sizes once the method wrapped the model),
    so that a run failing midway is recorded with what it had measured.
    """
    record["environment"] = measure.environment(prepared.device)
    inputs = RunInputs(
        cfg=prepared.cfg,
        splits=prepared.splits,
        method_object=prepared.method_object,
        context=prepared.context,
        work_dir=work_dir,
        device=prepared.device,
        precision=prepared.precision,
        callbacks=callbacks,
        data_sha256=prepared.identity["data_sha256"],
        retention=prepared.retention,
        on_wrapped=lambda sizes: record.update(records.wrapped_fields(sizes)),
    )
    fitted = prepared.objective.fit(inputs)
    record.update(records.fitted_fields(record, prepared.cfg, fitted, _save(prepared, fitted, work_dir)))


def _save(prepared: PreparedRun, fitted: FittedRun, work_dir: Path) -> records.SavedFiles:
    """What trained, in the libraries' formats (harness.export), and the samples.

    Kept under results/artifacts with keep_artifacts=true, with the tokenizer (and a random-init base) beside
    it; else saved to a temporary folder only to be measured. ``trained_bytes`` counts the trained files
    alone, so it is the same figure either way. Rank 0 alone saves: every rank
    holds the same trained weights, and only rank 0 writes under results_dir.
    """
    cfg = prepared.cfg
    if not distributed.is_main_process():
        return records.SavedFiles(trained_bytes=None, artifact_dir=None, samples_file=None)
    artifact_dir = Path(cfg.results_dir) / "artifacts" / prepared.run_id if cfg.keep_artifacts else work_dir / "trained"
    if cfg.keep_artifacts:
        shutil.rmtree(artifact_dir, ignore_errors=True)  # a forced rerun's model replaces the one kept before
        export.save_beside(cfg, prepared.objective, artifact_dir)
    trained_bytes = export.save_trained(fitted.model, artifact_dir, cfg.model)
    return records.SavedFiles(
        trained_bytes=trained_bytes,
        artifact_dir=str(artifact_dir) if cfg.keep_artifacts else None,
        samples_file=records.write_samples(prepared.record_path, fitted.samples),
    )


def execute(prepared: PreparedRun, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train and record; a failure is written as a failed record and re-raised as RunFailed.

    ``callbacks`` are extra Trainer callbacks (the study's trial reporter);
    one whose ``pruned`` is true after training makes the record ``pruned``.
    A record that cannot be written becomes a small failed record saying why
    (RunFailed), and when not even that can be written, RecordNotWritten.
    On several processes every rank trains and returns the record, and rank 0
    alone writes it (harness.distributed).

    The run is tracked by the tracker ``tracking`` names (harness.tracking): the
    Trainer logs to it as it trains, and the record's headline, failed or not,
    is logged to it once the record is written.
    """
    with tracking.tracked_run(prepared.cfg, prepared.run_id) as tracked:
        try:
            record = _execute(prepared, callbacks)
        except RunFailed as failed:
            tracked.log_record(failed.record)
            raise
        tracked.log_record(record)
    return record


def _execute(prepared: PreparedRun, callbacks: list[Any] | None) -> dict[str, Any]:
    callbacks = list(callbacks or [])
    record = records.started_record(prepared.cfg, prepared.run_id, prepared.identity)
    if distributed.is_main_process():  # benchmark scores of the model this training replaces are not its own
        records.sidecar_path(prepared.cfg.results_dir, prepared.run_id).unlink(missing_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f"harness-{prepared.run_id}-"))
    try:
        _train_and_measure(prepared, record, work_dir, callbacks)
    except Exception as error:  # every failure becomes a record; Ctrl-C (BaseException) writes none
        _mark_failed(record, error, traceback.format_exc().splitlines()[-TRACEBACK_TAIL_LINES:])
        _write_failed(prepared.record_path, record, error)
        raise RunFailed(record) from error
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    pruned_at = next((c.pruned_at_step for c in callbacks if getattr(c, "pruned", False)), None)
    record.update(
        status="pruned" if pruned_at is not None else "success",
        pruned_at_step=pruned_at,
        finished_at=datetime.now(timezone.utc).isoformat(),
    )
    try:
        _write(prepared.record_path, record)
    except OSError as error:  # the run finished but its record did not land: say so in a failed one
        _mark_failed(record, error, [f"writing {prepared.record_path}: {type(error).__name__}: {error}"])
        _write_failed(prepared.record_path, record, error)
        raise RunFailed(record) from error
    return record


def _mark_failed(record: dict[str, Any], error: BaseException, trace: list[str]) -> None:
    record.update(
        status="failed",
        error=f"{type(error).__name__}: {error}",
        error_kind=error_kind(error),
        traceback=trace,
        finished_at=datetime.now(timezone.utc).isoformat(),
    )


def _write_failed(path: Path, record: dict[str, Any], cause: BaseException) -> None:
    """Write the failed record; when that fails (a full disk), try a smaller one (no learning curve, no
    traceback), and when that fails too, raise RecordNotWritten: never a partial record."""
    try:
        _write(path, record)
        return
    except OSError:
        pass
    small = {**record, "learning_curve": [], "traceback": []}
    try:
        _write(path, small)
    except OSError as error:
        raise RecordNotWritten(path, error) from cause
    record.update(small)


def _write(path: Path, record: dict[str, Any]) -> None:
    """On several processes rank 0 alone writes (harness.distributed)."""
    if distributed.is_main_process():
        records.write_record(path, record)
