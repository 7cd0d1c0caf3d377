"""Measurement stage: parameters, peak memory, time, disk size, environment.

Every method is measured by the same code at the same points of the run, so
the figures are comparable across methods; this module is where fairness of
measurement lives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import platform
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

from harness.compat import is_4bit_parameter
from harness.versions import package_versions

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "evaluate",
    "accelerate",
    "hydra-core",
    "optuna",
    "pandas",
    "bitsandbytes",
)
RSS_SAMPLE_INTERVAL_S = 0.02
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"  # proc(5): writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS
RESET_TOLERANCE_KIB = 4 * 1024  # what the process may map between the reset and the reading


def parameter_count(parameter: torch.Tensor) -> int:
    """Logical parameter count: a 4-bit weight packs two values per byte.

    Mirrors PEFT's ``get_nb_trainable_parameters`` so that full, adapter and
    PEFT methods are counted the same way.
    """
    count = parameter.numel()
    if is_4bit_parameter(parameter):
        count *= 2 * parameter.element_size()
    return count


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) logical parameters of every tensor the model holds, each counted once.

    This is PEFT's own count (``get_nb_trainable_parameters``), inactive copies
    included; :func:`parameter_counts` is the one a record reports.
    """
    seen, trainable, total = set(), 0, 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        count = parameter_count(parameter)
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total


def _inactive_parameters(model: nn.Module) -> set[int]:
    """Parameters the model holds but never computes with: the frozen original a PEFT
    ``modules_to_save`` wrapper keeps beside the trained copy of a head."""
    from peft.utils.other import ModulesToSaveWrapper

    inactive: set[int] = set()
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper) and module.original_module is not None:
            inactive |= {id(p) for p in module.original_module.parameters()}
    return inactive


def _is_head(name: str, head_modules: list[str]) -> bool:
    return any(part in head_modules for part in name.split("."))


def parameter_counts(model: nn.Module, head_modules: list[str], auxiliary: nn.Module | None = None) -> dict[str, Any]:
    """What a record says about parameters, each figure one quantity.

    * ``method``: trainable parameters the method adds or unfreezes, the task head excluded;
    * ``head``: trainable parameters of the task head (a new classifier or reward head; 0 for a generator);
    * ``auxiliary``: trainable parameters of a model trained beside the evaluated one (PPO's value model);
    * ``trainable``: the three together: every parameter the optimizer updates;
    * ``total``: every parameter of the evaluated model, each tensor once: the frozen original of a
      head that PEFT copies (``modules_to_save``) is not computed with, so it is not counted.
    """
    inactive, seen = _inactive_parameters(model), set()
    counts = {"method": 0, "head": 0, "auxiliary": 0, "total": 0}
    for name, parameter in model.named_parameters():
        if id(parameter) in seen or id(parameter) in inactive:
            continue
        seen.add(id(parameter))
        count = parameter_count(parameter)
        counts["total"] += count
        if parameter.requires_grad:
            counts["head" if _is_head(name, head_modules) else "method"] += count
    if auxiliary is not None:
        counts["auxiliary"] = sum(parameter_count(p) for p in set(auxiliary.parameters()) if p.requires_grad)
    counts["trainable"] = counts["method"] + counts["head"] + counts["auxiliary"]
    counts["method_percent"] = 100.0 * counts["method"] / counts["total"] if counts["total"] else None
    return counts


def tensor_bytes(*modules: nn.Module | None) -> int:
    """Bytes held by the modules' parameters and buffers (packed 4-bit storage as stored), each storage once."""
    seen, total = set(), 0
    for module in modules:
        if module is None:
            continue
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "meta":
                continue
            key = (tensor.device.type, tensor.untyped_storage().data_ptr())
            if key in seen:
                continue
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def release_freed_memory(device: torch.device | None = None) -> None:
    """Hand memory freed by earlier work back before a baseline is taken.

    glibc keeps freed heap pages resident, so in a multirun (several runs in
    one process) the RSS left behind by a previous, larger run would inflate
    the next run's baseline and hide its peak. ``malloc_trim(0)`` returns them;
    on CUDA the caching allocator's free blocks go back with ``empty_cache``.
    """
    gc.collect()
    trim_heap()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def trim_heap() -> None:
    """``malloc_trim(0)``: free heap pages go back to the kernel, so resident memory is memory in use."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig``: milliseconds per call)."""
    libc_name = ctypes.util.find_library("c") if platform.system() == "Linux" else None
    libc = ctypes.CDLL(libc_name) if libc_name else None
    return getattr(libc, "malloc_trim", None)


class PeakProbe(ABC):
    """One way of reading a device's memory: in use now, peak since the last reset."""

    source = ""

    @abstractmethod
    def current(self) -> int:
        """Bytes in use now."""

    @abstractmethod
    def reset(self) -> None:
        """Start a new peak from what is in use now."""

    @abstractmethod
    def peak(self) -> int:
        """The largest number of bytes in use since the last reset."""

    def close(self) -> None:  # noqa: B027 - only the sampling probe holds a resource
        """Release what the probe holds."""


class CudaAllocatorProbe(PeakProbe):
    """The CUDA caching allocator's own counters: bytes of live tensors, and their peak.

    ``reserved_peak`` is the allocator's reserved (cached) peak of the same
    window: what the device actually had to provide.
    """

    source = "cuda_max_memory_allocated"

    def __init__(self, device: torch.device):
        self.device = device

    def current(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def reset(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def reserved_peak(self) -> int:
        return torch.cuda.max_memory_reserved(self.device)


def _status_kib(field: str) -> int:
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in {PROC_STATUS}")


class KernelHighWaterMarkProbe(PeakProbe):
    """Linux's own peak of the process's resident set (``VmHWM``), reset through ``clear_refs``.

    The kernel updates it on every page it maps, so no spike is missed, however short.
    """

    source = "linux_vmhwm"

    @staticmethod
    def available() -> bool:
        """A kernel that accepts the reset and honours it: right after it, the peak is the current RSS
        (a sandbox that ignores the write would leave the lifetime peak, model loading included)."""
        try:
            PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
            peak, now = _status_kib("VmHWM"), _status_kib("VmRSS")
        except OSError:
            return False
        return peak - now <= RESET_TOLERANCE_KIB

    def current(self) -> int:
        return _status_kib("VmRSS") * 1024

    def reset(self) -> None:
        PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)

    def peak(self) -> int:
        return _status_kib("VmHWM") * 1024


class SampledRssProbe(PeakProbe):
    """RSS sampled every 20 ms in a thread: the fallback where the kernel keeps no resettable peak.

    A spike shorter than the interval can be missed; the record names this source.
    """

    source = "rss_sampled_20ms"

    def __init__(self):
        self.process = psutil.Process()
        self._lock = threading.Lock()  # a sample taken before a reset must not land after it
        self._peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
            with self._lock:
                self._peak = max(self._peak, self.current())

    def current(self) -> int:
        return self.process.memory_info().rss

    def reset(self) -> None:
        with self._lock:
            self._peak = self.current()

    def peak(self) -> int:
        with self._lock:
            self._peak = max(self._peak, self.current())
            return self._peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def peak_probe(device: torch.device) -> PeakProbe:
    """The most exact probe the device and platform offer."""
    if device.type == "cuda":
        return CudaAllocatorProbe(device)
    return KernelHighWaterMarkProbe() if KernelHighWaterMarkProbe.available() else SampledRssProbe()


PHASES = ("train", "eval")


class MemoryMeter:
    """Peak memory of a run's training steps and of its evaluations, measured apart.

    Periodic evaluation runs inside ``Trainer.train``; a pass over held-out
    data (full-vocabulary logits, greedy generation) can need more memory than
    a training step, so it must not set the training peak. The meter keeps one
    window per phase: entering a phase folds the probe's peak into the phase
    being left and resets the probe. Both phases are measured against the same
    baseline: memory in use when training begins (model loaded, freed memory
    handed back). Every window opens with freed heap handed back to the kernel
    (freed CUDA blocks to the device), so a window counts the memory in use
    when it opens plus what it allocates, not what the other phase freed:
    an evaluation during training still holds the optimizer state, which is in use.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.probe: PeakProbe | None = None
        self.baseline_bytes: int | None = None
        self.peak_bytes: dict[str, int | None] = dict.fromkeys(PHASES)
        self.reserved_peak_bytes: dict[str, int | None] = dict.fromkeys(PHASES)
        self.phase: str | None = None

    @property
    def source(self) -> str | None:
        return self.probe.source if self.probe is not None else None

    def start(self) -> None:
        """Take the baseline and open the training window."""
        release_freed_memory(self.device)
        self.probe = peak_probe(self.device)
        self.baseline_bytes = self.probe.current()
        self.probe.reset()
        self.phase = "train"

    def enter(self, phase: str | None) -> None:
        """Close the current window (its peak is kept) and open one for ``phase`` (None: count nothing)."""
        if self.probe is None:
            return
        if self.phase is not None:
            self.peak_bytes[self.phase] = max(self.peak_bytes[self.phase] or 0, self.probe.peak())
            if isinstance(self.probe, CudaAllocatorProbe):
                reserved = self.probe.reserved_peak()
                self.reserved_peak_bytes[self.phase] = max(self.reserved_peak_bytes[self.phase] or 0, reserved)
        if phase == "train" and self.device.type == "cpu":
            # Evaluation's freed pages would otherwise count as training's peak. Entering an evaluation is not
            # trimmed: the pages training freed are those it takes back at its next step, and returning them to
            # the kernel only to fault them in again would slow training (its peak is unaffected either way).
            trim_heap()
        self.probe.reset()
        self.phase = phase

    @contextmanager
    def phase_of(self, phase: str):
        """Count the block's memory to ``phase``, then go back to the phase before it."""
        previous = self.phase
        self.enter(phase)
        try:
            yield self
        finally:
            self.enter(previous)

    def stop(self) -> None:
        self.enter(None)
        if self.probe is not None:
            self.probe.close()

    def as_record(self) -> dict[str, Any]:
        """Absolute peaks and peaks above the baseline, per phase, in bytes."""
        out: dict[str, Any] = {"source": self.source, "baseline_bytes": self.baseline_bytes}
        for phase in PHASES:
            peak = self.peak_bytes[phase]
            out[f"{phase}_peak_bytes"] = peak
            above = None if peak is None or self.baseline_bytes is None else max(0, peak - self.baseline_bytes)
            out[f"{phase}_peak_above_baseline_bytes"] = above
            out[f"{phase}_cuda_reserved_peak_bytes"] = self.reserved_peak_bytes[phase]
        return out


class Stopwatch:
    """Wall time of a block, with the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _git(*args: str) -> str | None:
    """git's answer in the source checkout the harness runs from; None for an installed package, whose folder
    may well lie inside some other repository (a virtual environment in a project)."""
    from harness.paths import source_checkout

    checkout = source_checkout()
    if checkout is None:
        return None
    try:
        out = subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What a reader needs to reproduce or explain a figure."""
    versions = package_versions(*PACKAGES)
    revision = _git("rev-parse", "HEAD")
    # A new, uncommitted config counts; run outputs (results/, committed examples included) do not.
    status = _git("status", "--porcelain", "--untracked-files=normal", "--", ".", ":(exclude)results")
    return {
        "host": platform.node(),
        "pid": os.getpid(),  # which worker ran it, when a launcher spreads a sweep over processes or nodes
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "device": device.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "git_revision": revision,
        "git_dirty": bool(status) if status is not None else None,
    }
