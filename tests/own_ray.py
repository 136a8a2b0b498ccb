"""This test session's own Ray clusters, stopped by the PIDs that use their temp dir (never `ray stop`, which
stops every Ray on the machine); free loopback ports for them."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_using(temp: str) -> list[int]:
    """Processes whose command line names this test's Ray temp dir (its head's GCS, raylet, agents, workers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp in cmdline:
            pids.append(int(proc.name))
    return pids


def stop_own_ray(temp: str, grace: float = 10.0) -> None:
    """Stop the Ray this test started, by the PIDs that use its temp dir; never `ray stop` (it stops every
    Ray cluster on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_using(temp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while pids_using(temp) and time.time() < deadline:
            time.sleep(0.2)
