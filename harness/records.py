"""Run records: one JSON file per run, the unit of truth for every report.

A record is written atomically (temporary file in the same folder, fsync,
rename), so a killed run leaves either no record or a complete one. Its
``run_id`` is a hash of the resolved config without output-only keys, plus
what the config leaves open and the run settles: the device type, the
precision ``auto`` resolved to, and the content hash of the data. The same
experiment always maps to the same file and a rerun can skip it; a run on
other hardware or other data is another experiment, with its own record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from harness import distributed
from harness.config import primary_metric

if TYPE_CHECKING:  # the report reads records without loading torch
    from harness.objectives.base import FittedRun, ModelSizes

# 2: memory per phase (train/eval) with weights, params split into method/head/auxiliary, run identity.
SCHEMA_VERSION = 2
# Keys (dotted paths) that say where or how to run and write, not what the
# experiment is. A search space is what the tuner may try, not what a run did.
NON_IDENTITY_KEYS = (
    "results_dir",
    "data_root",  # where the data was read from; the data's content hash is part of the identity instead
    "task.local.root",
    "force",
    "keep_artifacts",
    "memory_limit_gb",
    "hydra",
    "method.search",
    "tuning.storage",
    "tuning.trial_id",
    "tuning.pruner",
    "tuning.heartbeat_interval",
    # How the batch is cut into passes, or when the DPO reference is scored: memory and time change, not what
    # is computed (the same examples per optimizer step, the same loss), so a run that ran out of memory is
    # finished under its own run_id with a smaller micro-batch. The record's ``memory`` and ``training``
    # blocks carry the micro-batch, ``compute`` the precomputation's time.
    "budget.micro_batch_size",
    "objective.precompute_ref_log_probs",
    # The same tensors read from a pickle instead of safetensors.
    "model.allow_pickle_weights",
    # How many processes share an optimizer step and how the model is laid out on them (DDP, FSDP, ZeRO-3):
    # budget.batch_size is the global batch whatever the world size, each process taking an equal share, so the
    # same examples make the same step (harness.distributed). The record's ``distributed`` block says how it ran.
    "distributed",
    # What general text is scored for forgetting: the run settles its cut and content hash when it measures it
    # (harness.forgetting.RetentionInputs.identity), so runs that score no text (classifiers) keep their run_id.
    "forgetting",
    # Where the run's logs are also sent (conf/tracking/): an experiment tracker watches a run, it does not change it.
    "tracking",
)
# Keys left out of the identity while they hold their default: added after records existed, so that adding
# them orphans no finished run. Set otherwise they are part of it (remote code is other code).
IDENTITY_DEFAULTS = {"model.trust_remote_code": False, "retention_task": None}
# A pruned trial is finished too: re-running it would spend the same compute to be pruned again.
FINISHED_STATUSES = ("success", "pruned")
REQUIRED_FIELDS = (
    "schema_version",
    "run_id",
    "status",
    "error",
    "role",
    "tuning",
    "identity",
    "model",
    "task",
    "method",
    "budget",
    "seed",
    "metrics",
    "primary_metric",
    "params",
    "memory",
    "time",
    "compute",
    "learning_curve",
    "training",
    "trained_bytes",
    "config",
    "environment",
)
# What a record must hold for any reader to place it (the report's row, the skip logic's status): a file
# without them is skipped with a warning. Records of schema 1 lack some REQUIRED_FIELDS but have these.
ESSENTIAL_FIELDS = ("schema_version", "run_id", "status", "model", "task", "method", "budget", "seed")


@dataclass(frozen=True)
class SavedFiles:
    """What a finished run wrote beside its record: the trained tensors and the generations."""

    trained_bytes: int | None  # None in a rank other than 0, which saves nothing
    artifact_dir: str | None  # where the trained tensors are kept (keep_artifacts=true), else None
    samples_file: str | None  # ``<run_id>.samples.jsonl`` beside the record, None when there were no samples


def started_record(cfg: DictConfig, rid: str, identity: dict[str, Any]) -> dict[str, Any]:
    """The record as it stands when training starts: what the run is, and every section still empty.

    A run that fails is written from this, with whatever was filled in before the failure.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": rid,
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
        "identity": identity,
        "metrics": {},
        "primary_metric": primary_metric(cfg),
        "params": {},
        "memory": {},
        "rank_allocation": None,
        "time": {},
        "compute": {},
        "learning_curve": [],
        "training": {},
        "data_sha256": identity["data_sha256"],
        "distributed": distributed.launch_fields(cfg),
        "config": identity_config(cfg),
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


def wrapped_fields(sizes: ModelSizes) -> dict[str, Any]:
    """Parameters and weights as the method wrapped the model: recorded at once, so a failed run keeps them."""
    return {
        "params": sizes.params,
        "memory": {"weights_bytes": sizes.weights_bytes, "auxiliary_weights_bytes": sizes.auxiliary_weights_bytes},
    }


def fitted_fields(record: dict[str, Any], cfg: DictConfig, fitted: FittedRun, saved: SavedFiles) -> dict[str, Any]:
    """Every field a fitted run fills in ``record`` (as :func:`started_record` made it, environment set).

    The one place a record's measurements are assembled, so that every objective's records have
    the same keys, in the same order, meaning the same thing.
    """
    from harness.budget import micro_batch_size, sequence_length  # here: the report reads records without torch
    from harness.models import quantization_of

    precision, spent = record["identity"]["precision"], fitted.spent
    world = record["distributed"]["world_size"]
    settings = {
        "optimizer": cfg.train.optimizer,
        "precision": precision,
        "batch_size": cfg.budget.batch_size,  # the global batch of an optimizer step, whatever the world size
        # at most this many examples per forward/backward pass (on each process)
        "micro_batch_size": micro_batch_size(cfg.budget, world),
        "max_seq_length": sequence_length(cfg),
    }
    metrics = {"validation": fitted.metrics["validation"], "test": fitted.metrics["test"]}
    name = record["primary_metric"]["name"]
    return {
        "metrics": metrics,
        "memory": {
            **fitted.memory,
            "device": record["identity"]["device_type"],
            "gpu": record["environment"]["gpu"],
            **_weights(fitted),
            "quantization": quantization_of(cfg),
            **settings,
        },
        "time": {
            "train_seconds": spent.seconds,
            "eval_seconds": fitted.final_eval_seconds + spent.eval_seconds_during_training,
            "final_eval_seconds": fitted.final_eval_seconds,
            "train_tokens_per_second": spent.train_tokens / spent.seconds if spent.seconds else None,
        },
        "compute": _compute(fitted),
        "learning_curve": fitted.learning_curve,
        "rank_allocation": fitted.rank_allocation,
        "forgetting": fitted.forgetting,
        "retention": fitted.retention,
        "trained_bytes": saved.trained_bytes,
        "artifact_dir": saved.artifact_dir,
        "training": {
            **settings,
            "learning_rate": cfg.method.lr,
            "weight_decay": cfg.train.weight_decay,
            "lr_scheduler": fitted.schedule.lr_scheduler,
            "warmup_steps": fitted.schedule.warmup_steps,
            "max_grad_norm": cfg.train.max_grad_norm,
            "data_seed": fitted.schedule.data_seed,
        },
        "samples_file": saved.samples_file,
        "distributed": {**record["distributed"], **fitted.distributed},
        "primary_metric": {
            **record["primary_metric"],
            "validation": metrics["validation"].get(name),
            "test": metrics["test"].get(name),
        },
    }


def _weights(fitted: FittedRun) -> dict[str, int]:
    """The evaluated model's bytes and an auxiliary model's (taken when the method wrapped them), and the
    frozen copies held beside them: references, reward models, TRL's "ref" adapter (all the rest)."""
    sizes = fitted.sizes
    own = sizes.weights_bytes + sizes.auxiliary_weights_bytes
    return {
        "weights_bytes": sizes.weights_bytes,
        "auxiliary_weights_bytes": sizes.auxiliary_weights_bytes,
        "frozen_models_bytes": max(0, fitted.held_weights_bytes - own),
        "held_weights_bytes": fitted.held_weights_bytes,
    }


def _compute(fitted: FittedRun) -> dict[str, Any]:
    """What training spent: the budget's tally, the examples and their order, then the objective's own costs."""
    spent = fitted.spent
    return {
        "steps": spent.steps,
        "train_tokens": spent.train_tokens,
        "seconds": spent.seconds,
        "eval_seconds_during_training": spent.eval_seconds_during_training,
        "stop_reason": spent.stop_reason,
        "samples": spent.samples,
        "data_order_sha256": spent.data_order_sha256,
        **spent.utilisation,
        **spent.by_objective,
    }


def identity_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without NON_IDENTITY_KEYS, and without IDENTITY_DEFAULTS keys at their default."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for dotted in NON_IDENTITY_KEYS:
        _pop(plain, dotted)
    for dotted, default in IDENTITY_DEFAULTS.items():
        _pop(plain, dotted, only_if=default)
    return plain


_ANY = object()


def _pop(plain: dict[str, Any], dotted: str, only_if: Any = _ANY) -> None:
    *parents, leaf = dotted.split(".")
    node = plain
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node and (only_if is _ANY or node[leaf] == only_if):
        del node[leaf]


def run_id(cfg: DictConfig, settled: dict[str, Any]) -> str:
    """Stable across processes and machines: sorted-key JSON of the identity config and of ``settled``
    (device type, resolved precision, data fingerprint: see :func:`harness.run.settled_identity`).

    Package versions stay out: an upgrade should not orphan finished runs. The
    report keeps runs of different versions apart instead.
    """
    canonical = json.dumps(
        {"config": identity_config(cfg), "settled": settled}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def runs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs"


def record_path(results_dir: str | Path, rid: str) -> Path:
    return runs_dir(results_dir) / f"{rid}.json"


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Atomic write: readers see the old file or the new one, never a torn one."""
    _write_atomically(path, lambda out: json.dump(record, out, indent=2, sort_keys=False, default=str))


def write_lines(path: Path, lines: list[str]) -> None:
    """Atomic write of a text file, one line per entry (JSON Lines)."""
    _write_atomically(path, lambda out: out.write("".join(line + "\n" for line in lines)))


def write_samples(path: Path, samples: list[dict[str, Any]]) -> str | None:
    """Prompts, generations and scores beside the record at ``path`` (``<run_id>.samples.jsonl``), for
    reading what was scored; the file's name, or None when there were none."""
    if not samples:
        return None
    samples_path = path.with_suffix(".samples.jsonl")
    write_lines(samples_path, [json.dumps(sample, ensure_ascii=False) for sample in samples])
    return samples_path.name


def _write_atomically(path: Path, write) -> None:
    """Write a temporary file beside ``path``, fsync it, rename it over ``path``; on any failure remove it.

    The temporary file's name carries its writer (host and PID), so that
    :func:`sweep_stale_temporaries` can tell a dead writer's leftover from a
    live writer's file in progress.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.{_WRITER}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _host_key() -> str:
    """Eight hex digits naming this host: a PID means something only on the host that issued it."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


_WRITER = f"{_host_key()}-{os.getpid()}"
# ``.<stem>.<host>-<pid>.<random>.tmp``; the stem may hold dots (``<run_id>.samples``).
_TEMPORARY_NAME = re.compile(r"^\.(?P<stem>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[^.]+\.tmp$")
# A temporary file whose writer cannot be checked (another host, or written before names carried the PID) is
# stale after this long: a record is written in well under a second, so an hour-old one has no writer left.
STALE_TEMPORARY_SECONDS = 3600
TEMPORARY_FOLDERS = ("runs", "studies")


def sweep_stale_temporaries(results_dir: str | Path) -> list[Path]:
    """Remove the temporary files dead writers left in ``runs/`` and ``studies/`` (a ``kill -9`` mid-write).

    A file is stale when its writer ran on this host and that PID is gone, or
    when its writer cannot be checked and the file is over an hour old. Files
    of live writers (other runs of a sweep, a second sweep) are never touched.
    Returns the files removed.
    """
    removed = []
    for name in TEMPORARY_FOLDERS:
        folder = Path(results_dir) / name
        for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else ():
            if _is_stale(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _is_stale(path: Path) -> bool:
    match = _TEMPORARY_NAME.match(path.name)
    if match and match["host"] == _host_key():
        return not _pid_alive(int(match["pid"]))
    try:
        return time.time() - path.stat().st_mtime > STALE_TEMPORARY_SECONDS
    except FileNotFoundError:  # its writer renamed it meanwhile
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass(frozen=True)
class RecordFile:
    """A record file as read: its record when usable, else why not.

    ``newer`` marks a record written by a newer harness (a higher
    ``schema_version``): unreadable here, but not to be overwritten either.
    """

    path: Path
    record: dict[str, Any] | None = None
    problem: str | None = None
    newer: bool = False

    @property
    def absent(self) -> bool:
        return self.record is None and self.problem is None


def inspect_record(path: str | Path) -> RecordFile:
    """Read one run record and say what is wrong with it: truncated or invalid JSON, not an object, a
    newer ``schema_version`` than :data:`SCHEMA_VERSION`, or a field missing that every reader needs."""
    return inspect_json(path, ESSENTIAL_FIELDS, versioned=True)


def inspect_json(path: str | Path, required: tuple[str, ...], versioned: bool = False) -> RecordFile:
    """Read a JSON object the harness wrote (a run record, a study summary), or say why it cannot be used.

    ``versioned``: the object carries ``schema_version``, and one newer than this harness's is refused
    before its fields are checked (a newer schema may have renamed them).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RecordFile(path)
    except (OSError, UnicodeDecodeError) as error:
        return RecordFile(path, problem=f"unreadable ({error})")
    try:
        found = json.loads(text)
    except json.JSONDecodeError as error:
        return RecordFile(path, problem=f"truncated or invalid JSON ({error})")
    if not isinstance(found, dict):
        return RecordFile(path, problem=f"not a JSON object (a {type(found).__name__})")
    version = found.get("schema_version")
    if versioned and isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        return RecordFile(
            path,
            problem=f"schema_version {version} is newer than this harness's {SCHEMA_VERSION} (upgrade the harness)",
            newer=True,
        )
    missing = [field for field in required if field not in found]
    if missing:
        return RecordFile(path, problem=f"missing required fields: {', '.join(missing)}")
    return RecordFile(path, found)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at path, or None when absent or unusable (see :func:`inspect_record`)."""
    return inspect_record(path).record


def is_done(results_dir: str | Path, rid: str) -> bool:
    """A usable record of this run finished (success or pruned); a bad or newer record is not done."""
    record = read_record(record_path(results_dir, rid))
    return bool(record) and record.get("status") in FINISHED_STATUSES


def scan_records(results_dir: str | Path) -> tuple[list[dict[str, Any]], list[RecordFile]]:
    """Every usable record under results_dir/runs in file-name order, and the files skipped, with why.

    A record is ``<run_id>.json``; a file beside it named ``<run_id>.<kind>.json`` (harness-eval's scores,
    :func:`sidecar_path`) is not one.
    """
    folder = runs_dir(results_dir)
    paths = sorted(p for p in folder.glob("*.json") if "." not in p.stem) if folder.is_dir() else []
    files = [inspect_record(p) for p in paths]
    return [f.record for f in files if f.record is not None], [f for f in files if f.problem is not None]


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every usable record under results_dir/runs, in file-name order; bad files are left out silently
    (:func:`scan_records` says which and why)."""
    return scan_records(results_dir)[0]


def missing_fields(record: dict[str, Any]) -> list[str]:
    return [field for field in REQUIRED_FIELDS if field not in record]


# --- files beside a record ----------------------------------------------------------------------------------

LM_EVAL_SIDECAR = "lm_eval"  # harness-eval's benchmark scores of a run's kept model (harness.evaluation)


def sidecar_path(results_dir: str | Path, rid: str, kind: str = LM_EVAL_SIDECAR) -> Path:
    """``runs/<run_id>.<kind>.json``: what was measured on a run after it finished, kept beside its record and
    written apart from it, so that the record, the unit of truth of the run itself, is never rewritten."""
    return runs_dir(results_dir) / f"{rid}.{kind}.json"


def scan_sidecars(results_dir: str | Path, kind: str = LM_EVAL_SIDECAR) -> tuple[dict[str, dict], list[RecordFile]]:
    """The usable sidecars of ``kind`` by run_id, and the files skipped (truncated, not an object, no run_id)."""
    folder = runs_dir(results_dir)
    paths = sorted(folder.glob(f"*.{kind}.json")) if folder.is_dir() else []
    found = [inspect_json(p, ("run_id", "tasks")) for p in paths]
    return {f.record["run_id"]: f.record for f in found if f.record is not None}, [f for f in found if f.problem]
