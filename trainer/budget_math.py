"""The budget arithmetic of calibration: median speeds, budget factors, start-up allowances, FLOPs caps.

Pure (no torch), so the driver's budget rules and trainer.calibrate import one definition."""
from __future__ import annotations

import statistics
from collections.abc import Iterable

from trainer.flops import FLOPS_PER_PARAM_TOKEN, attention_flops_per_token

# The fixed reference workloads of trainer/calibrate.py (never the candidate's train.py): a GPU-sized one
# and a small CPU one.
WORKLOADS = {
    "cuda": dict(depth=4, dim=768, heads=6, seq_len=1024, batch=16, vocab=8192),
    "cpu": dict(depth=2, dim=128, heads=4, seq_len=128, batch=4, vocab=512),
}
FLOPS_CAP_EFFICIENCY = 0.25   # flops mode: wall-clock cap assumes a candidate at least this efficient
                              # as the reference workload (a cap, not the budget)


def workload_shape(device: str) -> dict:
    """The reference workload of a device ('cuda', 'cuda:1' -> the GPU one; anything else the CPU one)."""
    return WORKLOADS["cuda" if str(device).split(":")[0] == "cuda" else "cpu"]


def reference_flops(device: str) -> float:
    """Model FLOPs of one work unit by trainer/flops.py's formula: matrices (blocks and output layer, not the
    embedding table) and full-causal attention in every layer, times the unit's tokens."""
    s = workload_shape(device)
    matrices = s["depth"] * 12 * s["dim"] ** 2 + s["vocab"] * s["dim"]
    attention = attention_flops_per_token([(s["dim"], -1)] * s["depth"], s["seq_len"])
    return float((FLOPS_PER_PARAM_TOKEN * matrices + attention) * s["batch"] * s["seq_len"])


def median_speed(speeds: Iterable[float]) -> float:
    """The median of measured speeds (of repeats, or of the devices of a cluster)."""
    values = [float(s) for s in speeds]
    if not values:
        raise ValueError("median_speed: no speeds given")
    if any(not v > 0 for v in values):
        raise ValueError(f"median_speed: speeds must be > 0, got {values}")
    return float(statistics.median(values))


def budget_factor(reference_speed: float, device_speed: float) -> float:
    """How many times longer this device trains than the reference one (>1 = slower device)."""
    if not reference_speed > 0 or not device_speed > 0:
        raise ValueError(f"budget_factor: speeds must be > 0 (reference {reference_speed}, device {device_speed})")
    return reference_speed / device_speed


def normalized_budget(reference_seconds: float, factor: float) -> float:
    """Training seconds on this device for `reference_seconds` on the reference device."""
    if reference_seconds <= 0 or factor <= 0:
        raise ValueError(f"normalized_budget: seconds and factor must be > 0 ({reference_seconds}, {factor})")
    return reference_seconds * factor


def startup_allowance(measured_startup_seconds, floor: float, multiple: float) -> float:
    """Seconds before training must start: `multiple` x the measured start-up (the worst of several), at least floor."""
    if isinstance(measured_startup_seconds, (int, float)):
        measured = [float(measured_startup_seconds)]
    else:
        measured = [float(s) for s in measured_startup_seconds]
    return max([floor] + [multiple * s for s in measured])


def flops_budget(reference_seconds: float, reference_tokens_per_second: float, flops_per_token: float) -> float:
    """Model FLOPs that a model of `flops_per_token` (trainer/flops.py) trains in `reference_seconds` on the
    reference device."""
    return flops_per_token * reference_tokens_per_second * reference_seconds


def flops_time_cap(budget_flops: float, device_speed: float, device: str,
                   efficiency: float = FLOPS_CAP_EFFICIENCY) -> float:
    """Wall-clock cap (budget_seconds) for a flops-mode trial: the time this device needs for the FLOPs at
    `efficiency` x the reference workload's FLOP rate."""
    if budget_flops <= 0 or device_speed <= 0 or efficiency <= 0:
        raise ValueError(f"flops_time_cap: all of flops {budget_flops}, speed {device_speed}, "
                         f"efficiency {efficiency} must be > 0")
    return budget_flops / (device_speed * reference_flops(device) * efficiency)
