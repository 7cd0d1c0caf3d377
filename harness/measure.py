"""Measurement stage: parameters, peak memory, time, disk size, environment.

Every method is measured by the same code at the same points of the run, so
the figures are comparable across methods; this module is where fairness of
measurement lives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import platform
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

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


def parameter_count(parameter: torch.Tensor) -> int:
    """Logical parameter count: a 4-bit weight packs two values per byte.

    Mirrors PEFT's ``get_nb_trainable_parameters`` so that full, adapter and
    PEFT methods are counted the same way.
    """
    count = parameter.numel()
    if parameter.__class__.__name__ == "Params4bit":
        bytes_per_element = parameter.element_size() if hasattr(parameter, "element_size") else 1
        count *= 2 * bytes_per_element
    return count


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) logical parameters; shared tensors counted once."""
    seen, trainable, total = set(), 0, 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        count = parameter_count(parameter)
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total


def release_freed_memory() -> None:
    """Hand memory freed by earlier work back to the OS before a baseline is taken.

    glibc keeps freed heap pages resident, so in a multirun (several runs in
    one process) the RSS left behind by a previous, larger run would inflate
    the next run's baseline and hide its peak. ``malloc_trim(0)`` returns them.
    """
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name and platform.system() == "Linux":
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


class PeakMemory:
    """Peak memory of a block of work, above the memory in use when it starts.

    On CUDA it reads the allocator's peak statistics after resetting them; on
    CPU it samples this process's resident set size every 20 ms in a thread,
    because RSS has no peak counter that can be reset.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self.reserved_peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        return "cuda_max_memory_allocated" if self.device.type == "cuda" else "process_rss_sampled_20ms"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
        else:
            release_freed_memory()
            process = psutil.Process()
            self.baseline_bytes = self.peak_bytes = process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, args=(process,), daemon=True)
            self._thread.start()
        return self

    def _sample(self, process: psutil.Process) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.reserved_peak_bytes = torch.cuda.max_memory_reserved(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)

    def as_record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "baseline_bytes": self.baseline_bytes,
            "peak_bytes": self.peak_bytes,
            "peak_above_baseline_bytes": max(0, self.peak_bytes - self.baseline_bytes),
            "reserved_peak_bytes": self.reserved_peak_bytes,
        }


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
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
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
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    revision = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
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
