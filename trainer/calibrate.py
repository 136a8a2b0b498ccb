"""Device calibration (issue 4): the speed of a fixed reference workload on this device, measured with torch.

speed = work units per second (one unit = one forward+backward of a fixed stack); budgets: trainer/budget_math.py."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

# The budget arithmetic lives in trainer/budget_math.py (no torch); re-exported here for calibration's callers.
from trainer.budget_math import (FLOPS_CAP_EFFICIENCY, WORKLOADS, budget_factor, flops_budget,  # noqa: F401
                                 flops_time_cap, median_speed, normalized_budget, reference_flops,
                                 startup_allowance, workload_shape)

WARMUP_UNITS = 3              # forward+backward passes before timing
REPEAT_SECONDS = {"cuda": 1.0, "cpu": 0.3}   # each timed repeat runs at least this long
DEFAULT_REPEATS = 5
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
    return workload_shape(torch.device(device).type)


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
