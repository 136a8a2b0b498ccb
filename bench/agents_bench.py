"""Agent proposer throughput: proposals per minute with N concurrent stand-in agents (each sleeping), the driver's
own CPU per proposal, and the size of the brief and of history.md after 50 trials.

Real Ray (local, 2 CPUs by default), a real archive, real worktrees; the driver's start_agent/harvest_agents run
as in a population. Usage: python bench/agents_bench.py [--concurrency 8 32] [--sleep 30] [--rounds 2]"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from orchestrator.config import load                      # noqa: E402
from orchestrator.driver import Driver                    # noqa: E402
from orchestrator.live import LiveBoard                   # noqa: E402
from orchestrator.proposers import mutate                 # noqa: E402
from orchestrator.proposers.brief import full_brief       # noqa: E402
from orchestrator.proposers.history import format_history  # noqa: E402

CRASH_TAIL = "Traceback (most recent call last):\n" + "".join(f'  File "train.py", line {i}\n' for i in range(30)) \
             + "torch.OutOfMemoryError: CUDA out of memory\n"


def driver_for(folder: Path, concurrency: int, sleep: float) -> Driver:
    cfg = load(None)
    cfg.archive = str(folder)
    cfg.proposers.weights = {"agent": 1.0}
    cfg.proposers.agent_concurrency = concurrency
    cfg.proposers.agent_command = f'sleep {sleep:g} && sed -i "s/^DEPTH = [0-9]*/DEPTH = $(( $$ % 7 + 3 ))/" train.py'
    driver = Driver(cfg, out=open(os.devnull, "w"))
    driver.open_archive()
    driver.rebuild()
    driver.board = LiveBoard(driver.out)
    return driver


def fill_history(driver: Driver, member: str, n: int) -> None:
    """n judged mutate trials on `member` (every fifth a crash with a log tail, every tenth promoted)."""
    rng = random.Random(0)
    for i in range(n):
        head = driver.archive.heads()[member]
        source, message = mutate.propose(driver.archive.source(head), rng)
        tid = driver.new_trial_id()
        driver.archive.add_pending(member, head, source, message, tid, "mutate")
        crash = i % 5 == 3
        row = {"status": "crash" if crash else "ok", "verdict": "promote" if i % 10 == 9 else "discard",
               "val_bpb": None if crash else 1.5 - i / 1000, "finished_at": time.time(), "margin": 0.01,
               "decided_by": "status crash" if crash else f"mean of 1 run {1.5 - i / 1000:.6f} >= head 1.5",
               "reason": "exit code 1; log tail: ..." if crash else "", "log_tail": CRASH_TAIL if crash else None}
        driver.archive.finish(tid, row, promote=row["verdict"] == "promote")
    driver.rebuild()


def throughput(ray, concurrency: int, sleep: float, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="agents-bench-") as tmp:
        driver = driver_for(Path(tmp) / "pop", concurrency, sleep)
        target, started = concurrency * rounds, 0
        members = sorted(driver.archive.heads())
        cpu0, t0 = time.process_time(), time.monotonic()
        while len(driver.ready) < target:
            while started < target and len(driver.agent_refs) < concurrency:
                driver.start_agent(members[started % len(members)])
                started += 1
            driver.harvest_agents(ray)
            time.sleep(0.05)
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        driver.archive.close()
    return {"concurrency": concurrency, "proposals": target, "wall_s": wall,
            "per_minute": 60 * target / wall, "driver_cpu_ms_per_proposal": 1000 * cpu / target}


def sizes() -> dict:
    with tempfile.TemporaryDirectory(prefix="agents-bench-") as tmp:
        driver = driver_for(Path(tmp) / "pop", 1, 0)
        fill_history(driver, "m0", 50)
        t0 = time.process_time()
        text = format_history(driver.history_inputs("m0"))
        build = time.process_time() - t0
        out = {"brief_chars": len(full_brief(driver.cfg)), "history_chars_after_50": len(text),
               "history_build_cpu_ms": 1000 * build}
        driver.archive.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--sleep", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    print(sizes(), flush=True)
    import ray
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for n in args.concurrency:
            r = throughput(ray, n, args.sleep, args.rounds)
            print(f"{n:3d} agents x {args.sleep:g}s: {r['proposals']} proposals in {r['wall_s']:.1f}s = "
                  f"{r['per_minute']:.1f}/min (ideal {60 * n / args.sleep:.1f}); driver CPU "
                  f"{r['driver_cpu_ms_per_proposal']:.1f} ms per proposal", flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
