"""Flatten run records into one pandas table: the index every report is computed from.

One row per record, failed and pruned runs included, with the cell each run
belongs to. ``python -m harness.report.table RESULTS_DIR`` prints it: a quick
look without writing anything.

A *cell* is one experimental condition that seeds replicate. A tuned cell is
its Optuna study (``tuning.study``); an untuned run's cell is its config
without the seed. When one method has several cells for the same model, task
and budget (a grid over ``method.r``, say), the label names what differs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from harness.records import NON_IDENTITY_KEYS, load_records

# Cell axes that every report groups by; a variant label separates cells within one of these groups.
GROUP_AXES = ["model", "task", "method", "budget"]
# Runs that differ in these are never averaged, paired or ranked together: the hardware sets what memory
# and time mean, and a library upgrade alone can move scores by points.
SETTING_AXES = ["hardware", "software", "memory_source"]
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes")
NOT_CELL_KEYS = ("seed", "role", "tuning", *NON_IDENTITY_KEYS)
QUICK_COLUMNS = [
    "task",
    "budget",
    "label",
    "seed",
    "role",
    "trial",
    "lr",
    "status",
    "metric",
    "validation",
    "test",
    "method_params",
    "trainable",
    "train_peak_mib",
    "train_s",
    "tokens_per_s",
    "mfu_pct",
]


def records_frame(records: list[dict[str, Any]], lm_eval: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per record, with the cell key and a readable label for the method's cell; with ``lm_eval`` (the
    sidecars of harness-eval by run_id), each benchmark score of the run's kept model too (:func:`lm_eval_fields`)."""
    lm_eval = lm_eval or {}
    frame = pd.DataFrame([{**_row(r), **lm_eval_fields(lm_eval.get(r.get("run_id")), r)} for r in records])
    if frame.empty:
        return frame
    frame["label"] = _variant_labels(frame, records)
    return frame


def _row(record: dict[str, Any]) -> dict[str, Any]:
    primary, params = record.get("primary_metric") or {}, record.get("params") or {}
    memory, time_, compute = _memory(record), record.get("time") or {}, record.get("compute") or {}
    tuning, config = record.get("tuning") or {}, record.get("config") or {}
    forgetting, retention = record.get("forgetting") or {}, record.get("retention") or {}
    return {
        "run_id": record.get("run_id"),
        "model": record.get("model"),
        "task": record.get("task"),
        "method": record.get("method"),
        "budget": record.get("budget"),
        "objective": record.get("objective"),
        "seed": record.get("seed"),
        "role": record.get("role", "run"),
        "status": record.get("status"),
        "error_kind": record.get("error_kind"),
        "error": record.get("error"),
        "study": tuning.get("study"),
        "trial": tuning.get("trial"),
        "tuned_params": json.dumps(tuning.get("params"), sort_keys=True) if tuning.get("params") else None,
        "lr": (config.get("method") or {}).get("lr"),
        "cell": tuning.get("study") or _config_cell(config, record.get("data_sha256")),
        "metric": primary.get("name"),
        "higher_is_better": primary.get("higher_is_better"),
        "validation": primary.get("validation"),
        "test": primary.get("test"),
        "method_params": params.get("method"),
        "head_params": params.get("head"),
        "trainable": params.get("trainable"),
        "total_params": params.get("total"),
        "method_pct": params.get("method_percent"),
        "train_peak_mib": _mib(memory.get("train_peak_bytes")),
        "train_above_mib": _mib(memory.get("train_peak_above_baseline_bytes")),
        "eval_peak_mib": _mib(memory.get("eval_peak_bytes")),
        "weights_mib": _mib(memory.get("weights_bytes")),
        "memory_source": memory.get("source") or "none",
        "device": memory.get("device"),
        "hardware": hardware(record),
        "software": software(record),
        "train_s": time_.get("train_seconds"),
        "eval_s": time_.get("eval_seconds"),
        "tokens_per_s": time_.get("train_tokens_per_second"),
        "train_tokens": compute.get("train_tokens"),
        "train_tflops": _scaled(compute.get("train_flops"), 1e12),
        "mfu_pct": _scaled(compute.get("mfu"), 0.01),
        "steps": compute.get("steps"),
        # General text's per-token cross-entropy before and after training, and its rise (harness.forgetting).
        "forgetting": forgetting.get("forgetting"),
        "ce_before": forgetting.get("before_ce"),
        "ce_after": forgetting.get("after_ce"),
        "forgetting_text": _scored_text(forgetting),
        "retention": (retention.get("primary_metric") or {}).get("value"),
        "retention_task": retention.get("task"),
        "pruned_at_step": record.get("pruned_at_step"),
        "trained_kib": (record.get("trained_bytes") or 0) / 1024 or None,
        "finished_at": record.get("finished_at"),
    }


def _scored_text(forgetting: dict[str, Any]) -> str | None:
    """Which text and which cut of it a forgetting figure was scored on: figures are comparable only when equal
    (tokens x window length; the model, and so the tokenisation, is a cell key)."""
    if not forgetting.get("text_sha256"):
        return None
    return f"{forgetting['text_sha256'][:12]}:{forgetting.get('tokens')}x{forgetting.get('sequence_length')}"


LM_EVAL = "lm_eval"  # the fields of a benchmark score: lm_eval|<task>|<metric>|<filter>, and |higher, |n beside it


def lm_eval_key(task: str, metric: str, filter_name: str) -> str:
    return "|".join((LM_EVAL, task, metric, filter_name))


def lm_eval_fields(sidecar: dict[str, Any] | None, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's benchmark scores from its harness-eval sidecar: per task, metric and filter the value, the metric's
    direction, how many examples were scored (``n``) and the settings they were scored under (``setting``: seeds
    scored under different ones are not averaged). An entry scored on another training of the same run_id (one a
    forced rerun replaced) is not this record's and is left out."""
    fields: dict[str, Any] = {}
    for task, entry in ((sidecar or {}).get("tasks") or {}).items():
        if record is not None and entry.get("record_finished_at") != record.get("finished_at"):
            continue
        for score in entry.get("scores") or []:
            key = lm_eval_key(task, score["metric"], score["filter"])
            fields[key] = score.get("value")
            fields[f"{key}|higher"] = score.get("higher_is_better")
            fields[f"{key}|n"] = entry.get("n_samples")
            fields[f"{key}|setting"] = _scored_under(entry)
    return fields


def _scored_under(entry: dict[str, Any]) -> str:
    """What makes two benchmark scores comparable: examples scored, shots, the data, lm-eval's and the task's versions."""
    data = entry.get("data") or {}
    source = json.dumps(data.get("data_sha256") or data.get("dataset_path"), sort_keys=True)
    return (
        f"n={entry.get('n_samples')} shots={entry.get('num_fewshot')} data={source} "
        f"lm-eval {entry.get('lm_eval_version')} task v{entry.get('task_version')}"
    )


def _scaled(value: float | None, unit: float) -> float | None:
    """``value`` in ``unit``s; None (no FLOPs counted: a record from before they were) stays None."""
    return value / unit if value is not None else None


def _mib(value: float | None) -> float | None:
    return value / 2**20 if value is not None else None


def _memory(record: dict[str, Any]) -> dict[str, Any]:
    """The record's memory section. A schema-1 record measured one window, evaluation included, under other
    names: none of its figures is the quantity a schema-2 column names, so none is carried over."""
    return dict(record.get("memory") or {}) if record.get("schema_version", 1) >= 2 else {}


def hardware(record: dict[str, Any]) -> str:
    """``CPU (<model>, <n> cores)`` or ``GPU (<model>)``: what memory and time were measured on; a run on several
    processes adds how many (``GPU (<model>) × 4 processes``): its time is theirs together, its memory each one's."""
    environment = record.get("environment") or {}
    device = (record.get("memory") or {}).get("device") or environment.get("device")
    world = (record.get("distributed") or {}).get("world_size") or 1
    processes = f" × {world} processes" if world > 1 else ""
    if device == "cuda":
        return f"GPU ({environment.get('gpu') or 'unknown model'}){processes}"
    if device == "cpu":
        cpu = f"CPU ({environment.get('cpu') or 'unknown model'}, {environment.get('cpu_count') or '?'} cores)"
        return cpu + processes
    return str(device or "unknown device") + processes


def software(record: dict[str, Any]) -> str:
    """The versions of the libraries that train, wrap and quantize the model, e.g. ``torch 2.13.0, peft 0.21.2, ...``
    (and CUDA's on a GPU)."""
    environment = record.get("environment") or {}
    packages = environment.get("packages") or {}
    versions = [f"{name} {packages.get(name) or '?'}" for name in VERSIONED_PACKAGES]
    return ", ".join([*versions, *([f"cuda {environment['cuda']}"] if environment.get("cuda") else [])])


def _cell_config(config: dict[str, Any]) -> dict[str, Any]:
    flat = _flatten(config)
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in NOT_CELL_KEYS)}


def _config_cell(config: dict[str, Any], data_sha256: Any) -> str:
    """An untuned cell: the config without seed and output keys, and the data it ran on (same config, other data:
    another cell)."""
    canonical = json.dumps({"config": _cell_config(config), "data": data_sha256}, sort_keys=True, default=str)
    return "config#" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _variant_labels(frame: pd.DataFrame, records: list[dict[str, Any]]) -> pd.Series:
    """The method name (``dpo+lora`` where a task was trained by several objectives),
    plus what tells its cells apart when one group holds several."""
    configs = {
        row.cell: _cell_config(r.get("config") or {}) for row, r in zip(frame.itertuples(), records, strict=True)
    }
    objectives = frame["objective"].fillna("cls").astype(str)
    several = frame.assign(objective=objectives).groupby("task")["objective"].transform("nunique") > 1
    labels = frame["method"].astype(str).where(~several, objectives + "+" + frame["method"].astype(str))
    for _, group in frame.assign(objective=objectives).groupby([*GROUP_AXES, "objective"], dropna=False):
        cells = list(dict.fromkeys(group["cell"]))
        if len(cells) < 2:
            continue
        for cell in cells:
            rows = group.index[group["cell"] == cell]
            labels[rows] = f"{labels[rows[0]]} ({_difference(cell, cells, configs)})"
    return labels


def _difference(cell: str, cells: list[str], configs: dict[str, dict[str, Any]]) -> str:
    """``r=8`` for a grid over method.r; ``tuned`` for a study's cell beside untuned runs."""
    if not cell.startswith("config#"):
        extra = cell.split("#")[0].split(",")[1:]
        return ", ".join(["tuned", *extra])
    mine = configs[cell]
    keys = sorted(
        {
            k
            for other in cells
            if other.startswith("config#")
            for k in set(mine) | set(configs[other])
            if configs[other].get(k) != mine.get(k)
        }
    )
    shown = [f"{k.rsplit('.', 1)[-1]}={mine.get(k)}" for k in keys if k != "method.lr" or len(keys) == 1]
    return ", ".join(shown[:3]) or "untuned"


def curves_frame(records: list[dict[str, Any]], frame: pd.DataFrame) -> pd.DataFrame:
    """Learning-curve points (training loss, validation metric) of the records in frame, long format."""
    wanted = frame.set_index("run_id")
    rows = []
    for record in records:
        if record.get("run_id") not in wanted.index:
            continue
        row = wanted.loc[record["run_id"]]
        for point in record.get("learning_curve") or []:
            for key, value in point.items():
                if key != "step" and value is not None:
                    rows.append(
                        {
                            "run_id": record["run_id"],
                            "task": row["task"],
                            "budget": row["budget"],
                            "label": row["label"],
                            "seed": row["seed"],
                            "step": point.get("step"),
                            "key": key,
                            "value": value,
                        }
                    )
    return pd.DataFrame(rows, columns=["run_id", "task", "budget", "label", "seed", "step", "key", "value"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m harness.report.table RESULTS_DIR", file=sys.stderr)
        return 2
    frame = records_frame(load_records(Path(argv[0])))
    if frame.empty:
        print(f"error: no run records under {Path(argv[0]) / 'runs'}", file=sys.stderr)
        return 1
    frame = frame.sort_values(["task", "budget", "label", "role", "trial", "seed"], na_position="last")
    print(frame[QUICK_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for _, row in frame[frame.status == "failed"].iterrows():
        print(f"FAILED {row.label} seed {row.seed}: {row.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
