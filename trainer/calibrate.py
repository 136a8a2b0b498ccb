"""Device calibration (issue 4): the speed of a fixed reference workload, and the budget arithmetic built on it.

speed = work units per second (one unit = one forward+backward of a fixed transformer stack); budget = reference x ref_speed / speed."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.flops import FLOPS_PER_PARAM_TOKEN, attention_flops_per_token

# The fixed reference workloads (never the candidate's train.py): a GPU-sized one and a small CPU one.
WORKLOADS = {
    "cuda": dict(depth=4, dim=768, heads=6, seq_len=1024, batch=16, vocab=8192),
    "cpu": dict(depth=2, dim=128, heads=4, seq_len=128, batch=4, vocab=512),
}
WARMUP_UNITS = 3              # forward+backward passes before timing
REPEAT_SECONDS = {"cuda": 1.0, "cpu": 0.3}   # each timed repeat runs at least this long
DEFAULT_REPEATS = 5
FLOPS_CAP_EFFICIENCY = 0.25   # flops mode: wall-clock cap assumes a candidate at least this efficient
                              # as the reference workload (a cap, not the budget)
SEED = 1234
CALIBRATION_FOLDER = "calibration"   # CACHE/calibration/<key>.json: a node's measured speed, reused by later runs


class _Block(torch.nn.Module):
    """Pre-norm attention + ReLU^2 MLP: the shape of the baseline's blocks, in plain torch."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        self.up = torch.nn.Linear(dim, 4 * dim, bias=False)
        self.down = torch.nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (d,))).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.relu(self.up(F.rms_norm(x, (d,)))).square())


def _shape(device: str) -> dict:
    return WORKLOADS["cuda" if torch.device(device).type == "cuda" else "cpu"]


def reference_workload(device: str):
    """A function running one work unit (forward + backward of the fixed stack) on `device`, synchronised."""
    shape, dev = _shape(device), torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        embed = torch.nn.Embedding(shape["vocab"], shape["dim"])
        blocks = torch.nn.Sequential(*[_Block(shape["dim"], shape["heads"]) for _ in range(shape["depth"])])
        head = torch.nn.Linear(shape["dim"], shape["vocab"], bias=False)
        model = torch.nn.Sequential(embed, blocks, head).to(dev)
        idx = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq_len"] + 1)).to(dev)
    inputs, targets = idx[:, :-1], idx[:, 1:]
    use_bf16 = dev.type == "cuda"

    def unit() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return unit


def reference_flops(device: str) -> float:
    """Model FLOPs of one work unit by trainer/flops.py's formula: matrices (blocks and output layer, not the
    embedding table) and full-causal attention in every layer, times the unit's tokens."""
    s = _shape(device)
    matrices = s["depth"] * 12 * s["dim"] ** 2 + s["vocab"] * s["dim"]
    attention = attention_flops_per_token([(s["dim"], -1)] * s["depth"], s["seq_len"])
    return float((FLOPS_PER_PARAM_TOKEN * matrices + attention) * s["batch"] * s["seq_len"])


def measure_speed(device: str, repeats: int = DEFAULT_REPEATS, threads: int | None = None,
                  repeat_seconds: float | None = None) -> float:
    """Work units per second on `device`: the median of `repeats` timed runs after a warm-up (higher = faster)."""
    return median_speed(measure_speeds(device, repeats, threads, repeat_seconds))


def measure_speeds(device: str, repeats: int = DEFAULT_REPEATS, threads: int | None = None,
                   repeat_seconds: float | None = None) -> list[float]:
    """The speed of each timed repeat (see measure_speed)."""
    if repeats < 1:
        raise ValueError(f"measure_speed: repeats must be >= 1, got {repeats}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        unit = reference_workload(device)
        for _ in range(WARMUP_UNITS):
            unit()
        seconds = repeat_seconds or REPEAT_SECONDS["cuda" if torch.device(device).type == "cuda" else "cpu"]
        return [_timed_repeat(unit, seconds) for _ in range(repeats)]
    finally:
        torch.set_num_threads(old_threads)


def _timed_repeat(unit, seconds: float) -> float:
    count, t0 = 0, time.perf_counter()
    while True:
        unit()
        count += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return count / elapsed


def speed_command(device: str, repeats: int = DEFAULT_REPEATS, threads: int | None = None) -> list[str]:
    """The command line that measures a device's speed in its own process (prints JSON)."""
    cmd = [sys.executable, "-m", "trainer.calibrate", "--device", device, "--repeats", str(repeats)]
    return cmd + (["--threads", str(threads)] if threads else [])


def parse_speed_output(stdout: str) -> float:
    """The speed from the last line of speed_command's output."""
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError(f"calibration printed no result; output was:\n{stdout[-2000:]}")
    return float(json.loads(lines[-1])["speed"])


def measure_speed_isolated(device: str, repeats: int = DEFAULT_REPEATS, threads: int | None = None,
                           timeout: float = 300.0, env: dict | None = None) -> float:
    """measure_speed in a child process, so the caller holds no CUDA context afterwards."""
    out = subprocess.run(speed_command(device, repeats, threads), capture_output=True, text=True,
                         timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"calibration on {device} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return parse_speed_output(out.stdout)


def calibration_key(device: str, device_name: str, threads: int | None) -> str:
    """What a cached speed is valid for: this node, the device (name and index), threads, torch, the workload."""
    workload = json.dumps([WORKLOADS, WARMUP_UNITS, REPEAT_SECONDS, DEFAULT_REPEATS, SEED], sort_keys=True)
    parts = [socket.gethostname(), device, device_name, os.environ.get("CUDA_VISIBLE_DEVICES", "") if
             device.startswith("cuda") else "", f"t{threads or 0}", torch.__version__, workload]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{parts[0]}-{device}-{device_name}")[:80]
    return f"{readable}-{digest}"


def cached_speed(cache_root, device: str, device_name: str, threads: int | None,
                 measure: Callable[[], float]) -> tuple[float, bool]:
    """(speed, whether it came from the cache): the speed measured earlier on this node for the same key
    (calibration_key) under CACHE/calibration, else measure() now, kept there for the next run. Delete the
    folder to measure again."""
    path = Path(cache_root).expanduser() / CALIBRATION_FOLDER / f"{calibration_key(device, device_name, threads)}.json"
    try:
        speed = float(json.loads(path.read_text())["speed"])
        if speed > 0:
            return speed, True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    speed = float(measure())
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    part.write_text(json.dumps({"speed": speed, "device": device, "device_name": device_name,
                                "threads": threads or 0, "torch": torch.__version__, "measured_at": time.time()}))
    os.replace(part, path)                      # atomic: a reader sees the whole record or none
    return speed, False


# ---------------------------------------------------------------- budget arithmetic

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Measure this device's speed on the reference workload.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeat-seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    speeds = measure_speeds(args.device, args.repeats, args.threads or None, args.repeat_seconds or None)
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    print(json.dumps({"device": args.device, "device_name": name, "speed": median_speed(speeds),
                      "speeds": speeds, "flops_per_unit": reference_flops(args.device)}), flush=True)


if __name__ == "__main__":
    main()
