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
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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
)
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


def identity_config(cfg: DictConfig) -> dict[str, Any]:
    plain = OmegaConf.to_container(cfg, resolve=True)
    for dotted in NON_IDENTITY_KEYS:
        *parents, leaf = dotted.split(".")
        node = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return plain


def run_id(cfg: DictConfig, settled: dict[str, Any]) -> str:
    """Stable across processes and machines: sorted-key JSON of the identity config and of ``settled``
    (device type, resolved precision, data fingerprint: see :func:`harness.run.settled_identity`).

    Package versions stay out: an upgrade should not orphan finished runs. The
    report keeps runs of different versions apart instead.
    """
    canonical = json.dumps({"config": identity_config(cfg), "settled": settled}, sort_keys=True, separators=(",", ":"), default=str)
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


def _write_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at path, or None when absent or unreadable (treated as not run)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_done(results_dir: str | Path, rid: str) -> bool:
    record = read_record(record_path(results_dir, rid))
    return bool(record) and record.get("status") in FINISHED_STATUSES


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every readable record under results_dir/runs, in file-name order."""
    folder = runs_dir(results_dir)
    records = (read_record(p) for p in sorted(folder.glob("*.json"))) if folder.is_dir() else ()
    return [r for r in records if r is not None]


def missing_fields(record: dict[str, Any]) -> list[str]:
    return [field for field in REQUIRED_FIELDS if field not in record]
