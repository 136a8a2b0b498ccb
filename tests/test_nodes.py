"""A real three-node Ray cluster on this machine (a head without CPUs, two one-CPU workers): a worker's raylet
killed mid-trial, the node back; `ray job submit` of a population, `ray job stop`, the same config submitted again.

The test starts and stops only its own cluster (its temp dir and ports, its processes by PID), never `ray stop`."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_OVERRIDES
from own_ray import free_port, pids_using, stop_own_ray

from orchestrator.archive import Archive

BIN = Path(sys.executable).parent
RAY = shutil.which("ray", path=str(BIN)) or "ray"
POPSEARCH = shutil.which("popsearch", path=str(BIN)) or "popsearch"
WORKERS = ("w1", "w2")


class LocalCluster:
    """A head (no CPUs: the driver and job supervisor only) and one-CPU worker nodes, each with a resource of
    its own name, all under one temp dir, so trial actors can only land on the workers."""

    def __init__(self):
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled")
        self.env.pop("RAY_ADDRESS", None)
        self.temp = tempfile.mkdtemp(prefix="rayn", dir="/tmp")   # Ray's socket paths must stay under 107 bytes
        self.port, self.dash = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.manager_ports: dict[str, int] = {}
        self.ray("start", "--head", f"--port={self.port}", "--num-cpus=0", "--resources={\"head\": 1}",
                 "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
                 f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats",
                 f"--node-manager-port={free_port()}", f"--temp-dir={self.temp}")

    def ray(self, *args, timeout=180) -> str:
        out = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=timeout, env=self.env)
        assert out.returncode == 0, f"ray {' '.join(args)}:\n{out.stdout}{out.stderr}"
        return out.stdout + out.stderr

    def add_nodes(self, *names: str) -> None:
        """Start (or start again) worker nodes, one after the other (nodes of one IP starting at once time
        out): one CPU each and a custom resource of its name."""
        for name in names:
            self.manager_ports[name] = free_port()
            self.ray("start", f"--address={self.address}", "--num-cpus=1", f"--resources={json.dumps({name: 1})}",
                     f"--node-manager-port={self.manager_ports[name]}",
                     f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", f"--temp-dir={self.temp}")

    def raylets(self) -> dict[int, str]:
        """PID -> worker node name, for the worker raylets alive now."""
        found = {}
        for pid in pids_using(self.temp):
            line = cmdline(pid)
            for name, port in self.manager_ports.items():
                if "raylet" in line and f"--node_manager_port={port} " in line + " ":
                    found[pid] = name
        return found

    def raylet_pid(self, name: str) -> int:
        return next(pid for pid, node in self.raylets().items() if node == name)

    def node_of(self, pid: int) -> str | None:
        """The worker node whose raylet is an ancestor of `pid`."""
        raylets = self.raylets()
        while pid > 1:
            if pid in raylets:
                return raylets[pid]
            pid = parent_of(pid)
        return None

    def stop(self) -> None:
        stop_own_ray(self.temp)
        shutil.rmtree(self.temp, ignore_errors=True)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def running_trials() -> list[int]:
    """PIDs of trial processes (the sandboxed train.py) on this machine."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and "trainer.sandbox" in cmdline(int(p.name))]


def trial_id_of(pid: int) -> str:
    """The trial a trial process runs: its scratch folder (its cwd) is named popsearch-<trial id>-*."""
    try:
        found = re.match(r"popsearch-(t\d+)", Path(os.readlink(f"/proc/{pid}/cwd")).name)
    except OSError:
        return ""
    return found.group(1) if found else ""


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.add_nodes(*WORKERS)
        yield c
    finally:
        c.stop()


def write_config(folder: Path, archive: Path, cache: Path, max_trials: int) -> Path:
    cfg = {"archive": str(archive),
           "population": {"size": 2, "overrides": dict(TINY_OVERRIDES)},
           "budget": {"seconds": 2.0, "startup_floor": 60.0, "overrun_tolerance": 0.5},
           "data": {"corpus": "builtin", "vocab_size": 512, "cache_dir": str(cache)},
           "judge": {"seq_len": 64, "eval_tokens": 4096},
           "selection": {"noise_seeds": 1, "head_runs": 3, "rerun_head_runs": 4, "patience": 2},
           "stop": {"max_trials": max_trials},
           "resources": {"device": "cpu", "cpu_slots": 2}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def ledger(archive: Path) -> pd.DataFrame:
    return pd.read_parquet(archive / "ledger") if (archive / "ledger").exists() else pd.DataFrame()


def archive_ids(archive: Path) -> tuple[list[str], list[str], list[str]]:
    """(judged trial ids from the commit trailers, refs/trials ids, pending ids)."""
    with Archive.open(archive, writer=False) as a:
        records = [r["trial_id"] for r in a.trial_records()]
        pending = [p.trial_id for p in a.pending()]
        refs = a.repo.git.for_each_ref("--format=%(refname)", "refs/trials/").split()
    return records, [r.rsplit("/", 1)[1] for r in refs], pending


def wait_until(predicate, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
               timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None:
            assert proc.poll() is None, f"driver ended while waiting for {what}:\n{log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened:\n{log.read_text() if log else ''}")


def trials_on(cluster: LocalCluster, node: str) -> dict[int, str]:
    """PID -> trial id of the trial processes running on worker node `node` now."""
    return {p: trial_id_of(p) for p in running_trials() if cluster.node_of(p) == node}


def test_worker_node_lost_mid_trial_then_back(cluster, tmp_path, cache_root, data_spec):
    """A worker node loses its raylet under a running trial: the trial is re-run on the other node and
    recorded once; the node is started again and the replacement actor there runs trials again."""
    archive = (tmp_path / "archive").resolve()
    cfg = write_config(tmp_path, archive, cache_root, max_trials=40)
    log = tmp_path / "run.log"
    env = dict(cluster.env, RAY_ADDRESS=cluster.address, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([POPSEARCH, "run", str(cfg)], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        lost = wait_until(lambda: next((n for n in WORKERS if any(trials_on(cluster, n))), None),
                          "a trial on a worker", proc, log)
        other = next(n for n in WORKERS if n != lost)
        killed, retried = next((p, t) for p, t in trials_on(cluster, lost).items() if t)
        os.kill(cluster.raylet_pid(lost), signal.SIGKILL)
        wait_until(lambda: any(t == retried and p != killed for p, t in trials_on(cluster, other).items()),
                   f"{retried} re-run on {other}", proc, log)
        cluster.add_nodes(lost)
        wait_until(lambda: " is back on " in log.read_text(), "the replacement actor", proc, log)
        wait_until(lambda: trials_on(cluster, lost), f"a trial on {lost} after it came back", proc, log)
        wait_until(lambda: retried in set(ledger(archive).get("trial_id", [])), f"{retried} recorded", proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    out = log.read_text()
    slot = re.search(r"actor (\S+) is back on", out).group(1)
    df = ledger(archive)
    records, refs, pending = archive_ids(archive)
    assert df.trial_id.is_unique and sorted(df.trial_id) == sorted(records) == sorted(refs), out
    assert not set(records) & set(pending), out                       # none recorded and still pending
    row = df[df.trial_id == retried].iloc[0]
    assert row.infra_failures == 1 and row.slot != slot, row.to_dict()    # run by the other node's actor
    assert out.count(f"{retried} lost to an infrastructure failure") == 1, out
    print(f"\nnode {lost} killed under {retried}: re-run on {other} ({row.slot}), recorded once; {slot} back "
          f"on {lost} and running trials again")


def job(cluster: LocalCluster, *args) -> str:
    sub, *rest = args
    return cluster.ray("job", sub, f"--address=http://127.0.0.1:{cluster.dash}", *rest)


def job_status(cluster: LocalCluster, job_id: str) -> str:
    out = job(cluster, "status", job_id).lower()
    return next((s for s in ("succeeded", "failed", "stopped") if s in out), "")


def submit(cluster: LocalCluster, workdir: Path) -> str:
    out = job(cluster, "submit", f"--working-dir={workdir}", "--no-wait", "--", POPSEARCH, "run", "cluster.yaml")
    return re.search(r"raysubmit_[A-Za-z0-9]+", out).group(0)


def test_ray_job_stop_then_submit_again_resumes(cluster, tmp_path, cache_root, data_spec):
    """`ray job submit` runs a population on the cluster; `ray job stop` (SIGTERM to the driver) leaves the
    archive resumable; the same config submitted again resumes it to SUCCEEDED: every trial in flight at the
    stop is run, none recorded before it is run again, nothing written into the uploaded working dir."""
    archive = (tmp_path / "archive").resolve()
    workdir = tmp_path / "job"                     # the upload holds only the config
    write_config(workdir, archive, cache_root, max_trials=3)
    first = submit(cluster, workdir)
    wait_until(lambda: not ledger(archive).empty or job_status(cluster, first), "a first trial recorded")
    job(cluster, "stop", first)
    wait_until(lambda: job_status(cluster, first), "the stopped job to end")
    logs = job(cluster, "logs", first)
    assert job_status(cluster, first) == "stopped", logs
    assert f"interrupted by SIGTERM; pending trials are kept: `popsearch resume {archive}`" in logs, logs
    before = ledger(archive).set_index("trial_id").finished_at.to_dict()
    records, _, pending = archive_ids(archive)
    assert before and pending and sorted(before) == sorted(records), logs

    second = submit(cluster, workdir)
    wait_until(lambda: job_status(cluster, second), "the resubmitted job to end", timeout=300)
    logs = job(cluster, "logs", second)
    assert job_status(cluster, second) == "succeeded", logs
    assert f"resuming population in {archive}" in logs and f"re-dispatching {len(pending)} trial(s)" in logs, logs
    df = ledger(archive)
    records, refs, left = archive_ids(archive)
    assert df.trial_id.is_unique and sorted(df.trial_id) == sorted(records) == sorted(refs), logs
    assert set(pending) <= set(records) | set(left) and set(pending) & set(records), logs   # none lost
    after = df.set_index("trial_id").finished_at.to_dict()
    assert all(after[t] == v for t, v in before.items()), logs           # none run twice
    assert len(df) >= 3 and (df.status == "ok").any(), logs               # the population ran to its end
    assert not (workdir / "ledger").exists(), logs                       # nothing written into the upload
    print(f"\njob stopped with {sorted(before)} recorded and {sorted(pending)} pending; resubmitted: "
          f"{sorted(after)} recorded once each")
