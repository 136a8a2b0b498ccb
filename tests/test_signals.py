"""A real `popsearch run` on the CPU demo shape, stopped by a real SIGTERM, resumed, stopped by SIGINT, and one
whose local Ray is killed under it: each ends in one line naming the archive, pending trials kept for resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import TINY_OVERRIDES

from orchestrator.archive import Archive

POPSEARCH = [sys.executable, "-m", "orchestrator.cli"]


def small_config(tmp_path: Path, cache: Path) -> Path:
    cfg = {"archive": str(tmp_path / "archive"),
           "population": {"size": 2, "overrides": dict(TINY_OVERRIDES)},
           "budget": {"seconds": 2.0, "startup_floor": 60.0},
           "data": {"corpus": "builtin", "vocab_size": 512, "cache_dir": str(cache)},
           "judge": {"seq_len": 64, "eval_tokens": 4096},
           "selection": {"noise_seeds": 1, "head_runs": 3, "rerun_head_runs": 4, "patience": 2},
           "stop": {"max_trials": 3},
           "resources": {"device": "cpu", "cpu_slots": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(args, log: Path) -> subprocess.Popen:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(POPSEARCH + args, stdout=open(log, "w"), stderr=subprocess.PIPE, text=True, env=env)


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = log.read_text()
        if text in out:
            return out
        assert proc.poll() is None, out + proc.stderr.read()
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never printed:\n{log.read_text()}")


def stop_with(proc: subprocess.Popen, sig: int) -> str:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return err


def pending_ids(archive: Path) -> list[str]:
    with Archive.open(archive, writer=False) as a:
        return sorted(p.trial_id for p in a.pending())


def judged_ids(archive: Path) -> list[str]:
    with Archive.open(archive, writer=False) as a:
        return sorted(r["trial_id"] for r in a.trial_records())


def records(archive: Path) -> list[dict]:
    with Archive.open(archive, writer=False) as a:
        return a.trial_records()


def test_sigterm_and_sigint_end_alike_and_resume(tmp_path, cache_root, data_spec):
    archive = (tmp_path / "archive").resolve()
    log = tmp_path / "run.log"
    proc = start(["run", str(small_config(tmp_path, cache_root))], log)
    wait_for(log, "actor cpu0 on", proc)
    err = stop_with(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [f"popsearch: interrupted by SIGTERM; pending trials are kept: "
                                        f"`popsearch resume {archive}` continues where this stopped"]
    kept = pending_ids(archive)
    assert kept and judged_ids(archive) == []

    proc = start(["resume", str(archive)], log)
    wait_for(log, f"re-dispatching {len(kept)} trial(s) that were in flight", proc)
    wait_for(log, "actor cpu0 on", proc)
    err = stop_with(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [f"popsearch: interrupted by SIGINT; pending trials are kept: "
                                        f"`popsearch resume {archive}` continues where this stopped"]
    assert set(kept) <= set(pending_ids(archive)) | set(judged_ids(archive))     # none lost, none run twice
    assert len(set(pending_ids(archive)) | set(judged_ids(archive))) == len(pending_ids(archive) + judged_ids(archive))


def test_a_lost_local_ray_stops_the_run_with_nothing_recorded(tmp_path, cache_root, data_spec):
    """The raylet this driver started is killed mid-trial: one line, exit 1, nothing recorded for the loss."""
    archive = (tmp_path / "archive").resolve()
    log = tmp_path / "run.log"
    proc = start(["run", str(small_config(tmp_path, cache_root))], log)
    wait_for(log, "actor cpu0 on", proc)
    raylet = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "ray/raylet"], capture_output=True, text=True)
    os.kill(int(raylet.stdout.split()[0]), signal.SIGKILL)        # the raylet of this driver's own Ray only
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("popsearch: the Ray cluster is gone"), err
    assert f"`popsearch resume {archive}` continues once Ray is back" in lines[0]
    # a trial whose result reached the driver before the loss was noticed is recorded as it ran (ok, or a
    # timeout on a loaded machine); nothing is recorded for the loss itself (no infra or crash row), and the
    # rest stay pending for resume
    assert pending_ids(archive)
    lost = [r for r in records(archive) if r["status"] in ("infra", "crash")]
    assert not lost, lost
