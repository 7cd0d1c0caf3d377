"""One run on several processes: data parallelism through the Trainer, and still one run record.

A run launched by ``torchrun --nproc_per_node=N`` or ``accelerate launch`` is N
processes (ranks) that each run the whole harness; the Trainer (through
accelerate) wraps the model in DDP, or shards it under the ``fsdp`` and
``zero3`` presets of ``conf/distributed/``. A plain ``harness-run`` with
``distributed.nproc_per_node=N`` starts that torchrun itself, on this machine
(inside a SLURM job of ``hydra/launcher=slurm_torchrun``, on the job's GPUs).

What stays as in one process, and how:

* **The experiment.** ``budget.batch_size`` is the global batch of an optimizer
  step: each rank takes ``batch_size / world_size`` examples per step, in
  passes of at most ``budget.micro_batch_size``. Accelerate hands rank ``r``
  batch ``k * world_size + r`` of the seeded order, so one optimizer step
  trains on the examples a single process would, and DDP's mean of the ranks'
  mean gradients is the whole batch's. The world size is therefore not part
  of the run_id (nor is the strategy: DDP, FSDP and ZeRO-3 compute the same
  step), as the micro-batch is not.
* **The record.** Only rank 0 writes (record, samples, artifacts) and logs the
  summary. Samples and the data-order fingerprint cover every rank's batches
  in the global order (:func:`gather`), tokens are summed (the Trainer gathers
  them), FLOPs are summed over ranks and set against the summed peaks of the
  ranks' devices, and memory is each rank's peak: the record's figures are the
  largest rank's, with the sum and the list beside them (:func:`combine_memory`).

Nothing here imports torch before a check needs it: :func:`world_size` and
:func:`rank` read the launcher's environment, so configs are validated before
the Trainer (which starts the process group) is even imported.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Set in the ranks that ``distributed.nproc_per_node`` started, so their record names that launcher.
LAUNCHED_BY_HARNESS = "HARNESS_NPROC_LAUNCH"
HARNESS_LAUNCHER = "harness (distributed.nproc_per_node)"
# Presets (conf/distributed/) whose strategy shards the model: they need several processes.
SHARDING_KEYS = ("fsdp", "deepspeed")
# DeepSpeed settings that would make a ZeRO run another experiment than the same run under DDP: the optimizer and
# its schedule are train.* for every run, precision is train.precision (``auto`` lets the Trainer fill it in).
DEEPSPEED_OWN_KEYS = ("optimizer", "scheduler")
DEEPSPEED_PRECISION_KEYS = ("bf16", "fp16", "amp")
# What the launcher exported, as this process started (libraries set some of these variables later).
_LAUNCH_ENVIRONMENT = frozenset(key for key in os.environ if key.startswith(("ACCELERATE_", "TORCHELASTIC_")))
# Memory fields that are a rank's own peak or baseline: the record gives the largest rank's, plus sum and list.
RANKED_MEMORY_KEYS = ("baseline_bytes", "train_peak_bytes", "eval_peak_bytes")


def _process_group():
    """torch.distributed when this process has joined a group (never imports torch itself)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """Processes of this run: the process group's, else the launcher's ``WORLD_SIZE``, else 1."""
    group = _process_group()
    return group.get_world_size() if group else int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    group = _process_group()
    return group.get_rank() if group else int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Rank 0: the one process that writes under results_dir and logs the run's summary."""
    return rank() == 0


def launched() -> bool:
    """This process is one rank of several that a launcher started."""
    return world_size() > 1


def nproc_per_node(cfg) -> int:
    node = cfg.get("distributed")
    return int(node.get("nproc_per_node") or 1) if node is not None else 1


def planned_world_size(cfg) -> int:
    """The processes the run trains on: those a launcher started, else the ``distributed.nproc_per_node`` the
    harness will start."""
    return world_size() if launched() else nproc_per_node(cfg)


def starts_processes(cfg) -> bool:
    """This process is to start the run's ranks (torchrun) rather than train itself."""
    return not launched() and nproc_per_node(cfg) > 1


def launcher() -> str | None:
    """Who started the ranks, from what each launcher sets in their environment; None for one process."""
    if not launched():
        return None
    if os.environ.get(LAUNCHED_BY_HARNESS):
        return HARNESS_LAUNCHER
    if {"ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION"} & _LAUNCH_ENVIRONMENT:
        return "accelerate launch"
    if "TORCHELASTIC_RUN_ID" in _LAUNCH_ENVIRONMENT:
        return "torchrun"
    return "environment (WORLD_SIZE, RANK)"


def strategy(cfg) -> str | None:
    """ddp, fsdp or zero3 (the preset's name) when the run has several processes; None in one."""
    node = cfg.get("distributed")
    return str(node.get("name", "ddp")) if node is not None and planned_world_size(cfg) > 1 else None


def launch_fields(cfg) -> dict[str, Any]:
    """The record's ``distributed`` block as known before training (a failed run keeps it)."""
    return {
        "world_size": world_size(),
        "launcher": launcher(),
        "strategy": strategy(cfg),
        "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def trainer_arguments(cfg) -> dict[str, Any]:
    """TrainingArguments the ``distributed`` preset sets (only where it sets them; none in one process)."""
    node = cfg.get("distributed")
    if node is None or planned_world_size(cfg) == 1:
        return {}
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True)
    names = {
        "backend": "ddp_backend",
        "find_unused_parameters": "ddp_find_unused_parameters",
        "fsdp": "fsdp",
        "fsdp_config": "fsdp_config",
        "deepspeed": "deepspeed",
    }
    return {argument: plain[key] for key, argument in names.items() if plain.get(key) is not None}


def check_device(cfg, device_type: str) -> None:
    """A sharding preset on CPU processes would train unsharded: accelerate shards (FSDP, DeepSpeed) only on
    accelerators and runs CPU processes as plain data parallelism (MULTI_CPU), so the record would name a strategy
    that did not run. Refused before any weights load."""
    node = cfg.get("distributed")
    sharding = [key for key in SHARDING_KEYS if node is not None and node.get(key)]
    if sharding and device_type == "cpu":
        from harness.config import ConfigError

        raise ConfigError(
            f"distributed.{sharding[0]}",
            f"shards the model over GPUs; on CPU accelerate runs the processes as plain data parallelism, so "
            f"preset {node.get('name')!r} would not shard anything (use distributed=ddp on CPU)",
        )


# --- across ranks ------------------------------------------------------------------------------------------------


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` in rank order (a list of one in a single process). A collective: every rank calls it."""
    group = _process_group()
    if group is None or group.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * group.get_world_size()
    group.all_gather_object(gathered, value)
    return gathered


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank, so that all ranks take rank 0's decision. A collective."""
    group = _process_group()
    if group is None or group.get_world_size() == 1:
        return value
    box = [value]
    group.broadcast_object_list(box, src=0)
    return box[0]


def backend() -> str | None:
    group = _process_group()
    return str(group.get_backend()) if group else None


def hosts() -> list[str]:
    """The machines the ranks ran on, in rank order, each once. A collective."""
    return list(dict.fromkeys(gather(platform.node())))


def combine_memory(per_rank: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One memory block from every rank's (``MemoryMeter.as_record``).

    Each peak and baseline is the largest rank's, so that it means what it means for one process: what one
    device (one process's resident set on CPU) had to hold. ``<key>_sum_over_ranks`` adds the ranks' (what the
    run held at once on all its devices, when their peaks coincide: an upper bound of it) and
    ``<key>_per_rank`` lists them.
    """
    first = dict(per_rank[0])
    combined: dict[str, Any] = {"source": first.get("source")}
    for key, value in first.items():
        if key == "source":
            continue
        values = [r.get(key) for r in per_rank]
        known = [v for v in values if v is not None]
        combined[key] = max(known) if known and isinstance(value, int | float | type(None)) else value
    for key in RANKED_MEMORY_KEYS:
        values = [r.get(key) for r in per_rank]
        known = [v for v in values if v is not None]
        combined[f"{key}_sum_over_ranks"] = sum(known) if len(known) == len(values) else None
        combined[f"{key}_per_rank"] = values
    return combined


def combine_flops(per_rank: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One FLOP tally from every rank's (``FlopTally.as_record``): the FLOPs and steps counted, summed."""
    first = dict(per_rank[0])
    flops = [r.get("train_flops") for r in per_rank]
    first["train_flops"] = sum(flops) if all(f is not None for f in flops) else None
    for key in ("flops_counted_steps", "flops_scaled_steps"):
        first[key] = sum(r.get(key) or 0 for r in per_rank)
    return first


def combine_peaks(per_rank: Sequence[tuple[float | None, str]]) -> tuple[float | None, str]:
    """The run's peak FLOP/s: the ranks' devices' peaks summed (None if any is unknown), and where it comes from."""
    peaks = [peak for peak, _ in per_rank]
    source = per_rank[0][1]
    if len(per_rank) == 1:
        return peaks[0], source
    total = sum(peaks) if all(p for p in peaks) else None
    return total, f"sum over {len(per_rank)} ranks of each rank's peak ({source})"


# --- starting the ranks ------------------------------------------------------------------------------------------


def run_processes(cfg, nproc: int) -> int:
    """Run ``cfg`` on ``nproc`` processes of this machine (torchrun, standalone: a free port of its own) and
    wait; the ranks write the record as any launch does. Returns torchrun's exit status.

    The ranks get the config as composed here (resolved, in a temporary file), not the command line again, so
    every launcher's jobs (a study's trials included) run exactly what they were given.
    """
    from omegaconf import OmegaConf, open_dict

    with tempfile.TemporaryDirectory(prefix="harness-ranks-") as folder:
        config_file = Path(folder) / "run.yaml"
        plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        with open_dict(plain):
            plain.force = True  # this process already decided to run it (records.is_done was false)
        OmegaConf.save(plain, config_file)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "harness.worker",
            str(config_file),
        ]
        return subprocess.run(command, env={**os.environ, LAUNCHED_BY_HARNESS: "1"}).returncode
