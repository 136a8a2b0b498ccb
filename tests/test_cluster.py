"""The cluster path for real: `ray start --head`, `ray job submit` of a population, SUCCEEDED, ledger; the test
stops only its own Ray (the processes that use its temp dir), never `ray stop`.

The working dir uploaded holds only the config; the archive and data stay outside it."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_OVERRIDES

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cmd(*args, timeout=300, env=None):
    exe = shutil.which("ray", path=str(BIN)) or "ray"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def ray_head(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")     # Ray's socket paths must stay under 107 bytes
    start = ray_cmd("start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                    f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
                    f"--temp-dir={temp}", env=env)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop_own_ray(temp)
        shutil.rmtree(temp, ignore_errors=True)


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


def test_ray_job_submit_runs_a_population(tmp_path, ray_head, data_spec, cache_root):
    address, env = ray_head
    workdir = tmp_path / "job"
    workdir.mkdir()
    archive = tmp_path / "archive"
    cfg = {
        "archive": str(archive),
        "population": {"size": 2, "overrides": dict(TINY_OVERRIDES)},
        "budget": {"seconds": 2.0, "startup_floor": 60.0},
        "data": {"corpus": "builtin", "vocab_size": 512, "cache_dir": str(cache_root)},
        "judge": {"seq_len": 64, "eval_tokens": 4096},
        "selection": {"noise_seeds": 1, "head_runs": 3, "confirm_head_runs": 4, "patience": 2},
        "stop": {"max_trials": 3},
        "resources": {"device": "cpu", "cpu_slots": 2},
    }
    (workdir / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    popsearch = shutil.which("popsearch", path=str(BIN)) or "popsearch"
    sub = ray_cmd("job", "submit", f"--address={address}", f"--working-dir={workdir}", "--no-wait",
                  "--", popsearch, "run", "cluster.yaml", env=env)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", sub.stdout + sub.stderr).group(0)
    status = ""
    deadline = time.time() + 420
    while time.time() < deadline:
        out = ray_cmd("job", "status", f"--address={address}", job_id, env=env)
        status = (out.stdout + out.stderr).lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(2)
    logs = ray_cmd("job", "logs", f"--address={address}", job_id, env=env).stdout
    assert "succeeded" in status, status + logs[-4000:]
    df = pd.read_parquet(archive / "ledger")
    assert len(df) >= 3 and df.trial_id.is_unique
    assert (df.status == "ok").any()
    assert not (workdir / "ledger").exists()          # nothing written into the uploaded working dir
