"""How close a run came to what its hardware can do: training FLOPs and model-FLOPs utilisation (MFU).

``train_flops`` is what the run's forward and backward passes computed, as
torch's own ``FlopCounterMode`` counts the aten operations that ran (matrix
products and attention; element-wise work is not counted, as in every MFU
convention). Counting what ran, not a formula of the architecture, is what
makes it right for every method: a frozen layer computes no weight gradient,
so LoRA or IA3 count the input gradients they need and nothing more; a
reference model's forward pass (DPO) and recomputation under gradient
checkpointing count because they run.

Counting costs about a quarter of a step, so only the first training step
(micro-batch) is counted; every later one is scaled from it by its padded
tokens (the positions the matrices multiply). Attention's quadratic share is
scaled linearly too: at the lengths these budgets use (MiniLM at 40 tokens) it
is under 2% of a step; so is the per-row work (the head, the virtual tokens
prompt and prefix tuning add to every row), which makes the scaled total
approximate where rows' lengths vary much. Online RL records no FLOPs
(``UNCOUNTED_ROLLOUTS``).

``mfu`` = ``train_flops / train_seconds / peak_flops_per_second``. The peak
is measured on CPU (the best of a few large matrix products in the run's
precision, once per process) and taken from the vendor's dense (no
sparsity) specification on a GPU; an unknown GPU gets no MFU rather than a
guess. On several processes (harness.distributed) each rank counts its own
steps: ``train_flops`` is their sum and the peak the sum of the ranks' peaks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from harness import distributed

# Input keys whose integer tensors are positions the model multiplies (DPO's chosen/rejected, SFT's ids, ...).
TOKEN_KEY_SUFFIX = "input_ids"
# Dense tensor-core peaks (FLOP/s, no structured sparsity) from the vendors' data sheets, by name fragment
# of torch.cuda.get_device_name and by precision; fp32 is the non-tensor-core FP32 rate (TF32 is off by
# default in torch for matmuls). Fragments match whole words, longer ones first (H100 PCIe before H100; L4 is
# not L40S).
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.0e12, "fp16": 756.0e12, "fp32": 51.2e12},
    "H100 NVL": {"bf16": 835.5e12, "fp16": 835.5e12, "fp32": 60.0e12},
    "H100": {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
    "A100": {"bf16": 312.0e12, "fp16": 312.0e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362.05e12, "fp16": 362.05e12, "fp32": 91.6e12},
    "L4": {"bf16": 121.0e12, "fp16": 121.0e12, "fp32": 30.3e12},
    "A10G": {"bf16": 70.0e12, "fp16": 70.0e12, "fp32": 35.0e12},
    "V100": {"fp16": 125.0e12, "fp32": 15.7e12},
    "T4": {"fp16": 65.0e12, "fp32": 8.1e12},
}
# The CPU peak: the best of REPEATS products of two SIZE x SIZE matrices, after one warm-up.
CPU_PEAK_SIZE = 2048
CPU_PEAK_REPEATS = 3
# Why online RL (PPO's loop, TRL's GRPO and RLOO) records no FLOPs: a step generates, and how much depends on the
# completions' lengths, which change as the policy trains (the first step's are the untrained model's), and TRL
# hands one generation to several accumulation steps; scaling one counted step would misstate the total, and
# counting every step would slow the steps the record times by about a quarter.
UNCOUNTED_ROLLOUTS = "online RL: generation inside training steps varies with the policy; not extrapolated"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_measured_cpu_peaks: dict[str, float] = {}


class FlopTally:
    """Training FLOPs: the first step counted exactly, later ones scaled from it (see the module's docstring)."""

    def __init__(self):
        self.flops = 0.0
        self.counted_steps = 0
        self.scaled_steps = 0
        self.scaled_by: str | None = None
        self.not_counted: str | None = None
        self._per_unit: float | None = None

    def step(self, run: Callable[[], Any], inputs: Any) -> Any:
        """Run one training step (``run``), adding its FLOPs."""
        units, unit = step_size(inputs)
        if unit is None:
            self.not_counted = UNCOUNTED_ROLLOUTS
            return run()
        if self._per_unit is None:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                result = run()
            counted = float(counter.get_total_flops())
            self.flops += counted
            self.counted_steps += 1
            self._per_unit, self.scaled_by = counted / units, unit
            return result
        result = run()  # a step that raises is not charged
        self.flops += self._per_unit * units
        self.scaled_steps += 1
        return result

    def as_record(self) -> dict[str, Any]:
        counted = self.counted_steps and self.not_counted is None
        return {
            "train_flops": self.flops if counted else None,
            "flops_counted_steps": self.counted_steps,
            "flops_scaled_steps": self.scaled_steps,
            "flops_scaled_by": self.scaled_by,
            "flops_not_counted": self.not_counted,
        }


def step_size(inputs: Any) -> tuple[float, str | None]:
    """What a step's work is proportional to: its padded token positions (micro-batch passes of the
    Trainer's objectives), or None for a step that generates from raw prompts (see ``UNCOUNTED_ROLLOUTS``)."""
    if isinstance(inputs, Mapping):  # a Trainer's batch is a BatchEncoding, a Mapping but not a dict
        positions = sum(
            value.numel()
            for key, value in inputs.items()
            if key.endswith(TOKEN_KEY_SUFFIX) and isinstance(value, torch.Tensor)
        )
        if positions:
            return float(positions), "padded_tokens"
    return 1.0, None


class TrainingFlops:
    """Trainer mixin: ``flop_tally`` adds up the FLOPs of every training step (see :class:`FlopTally`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.flop_tally = FlopTally()

    def training_step(self, model, inputs, *args, **kwargs):
        parent = super().training_step
        return self.flop_tally.step(lambda: parent(model, inputs, *args, **kwargs), inputs)


def peak_flops_per_second(device: torch.device, precision: str) -> tuple[float | None, str]:
    """The device's peak FLOP/s in ``precision`` and where the figure comes from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):
            if re.search(rf"(?<!\w){re.escape(fragment)}(?!\w)", name):
                peak = GPU_PEAK_FLOPS[fragment].get(precision)
                if peak:
                    return peak, f"specification: {name} {precision} dense"
        return None, f"unknown: no {precision} specification for {name}"
    if precision not in _measured_cpu_peaks:
        _measured_cpu_peaks[precision] = measure_cpu_peak(_DTYPES[precision])
    return _measured_cpu_peaks[precision], (
        f"measured: best of {CPU_PEAK_REPEATS} {CPU_PEAK_SIZE}x{CPU_PEAK_SIZE} {precision} matmuls, "
        f"{torch.get_num_threads()} threads"
    )


def run_peak_flops_per_second(device: torch.device, precision: str) -> tuple[float | None, str]:
    """The peak of the devices the run trained on: this process's, or on several processes the sum of every
    rank's (each measured at the same moment on CPU, where the ranks share the machine's cores), so that
    ``train_flops`` summed over ranks is set against the hardware that computed it. A collective."""
    return distributed.combine_peaks(distributed.gather(peak_flops_per_second(device, precision)))


def measure_cpu_peak(dtype: torch.dtype) -> float:
    """FLOP/s of the best of a few large matrix products: what this process's CPU threads can reach."""
    generator = torch.Generator().manual_seed(0)  # the run's global random stream stays untouched
    a = torch.randn(CPU_PEAK_SIZE, CPU_PEAK_SIZE, generator=generator).to(dtype)
    b = torch.randn(CPU_PEAK_SIZE, CPU_PEAK_SIZE, generator=generator).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(CPU_PEAK_REPEATS):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * CPU_PEAK_SIZE**3 / best


def utilisation(train_flops: float | None, seconds: float, device: torch.device, precision: str) -> dict[str, Any]:
    """Achieved FLOP/s, the peak it is set against, and their ratio (the record's MFU)."""
    if not train_flops or not seconds:
        return {"flops_per_second": None, "peak_flops_per_second": None, "peak_source": None, "mfu": None}
    achieved = train_flops / seconds
    peak, source = run_peak_flops_per_second(device, precision)
    return {
        "flops_per_second": achieved,
        "peak_flops_per_second": peak,
        "peak_source": source,
        "mfu": achieved / peak if peak else None,
    }
