"""The whole loop for real: a local Ray cluster, CPU trials, a git archive and its ledger.

Covers a run to completion (a rule-breaking agent among its proposers, an actor SIGKILLed mid-trial), and SIGKILL
of the driver and resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY_OVERRIDES
from orchestrator.archive import Archive
from orchestrator.replay import replay

POPSEARCH = [sys.executable, "-m", "orchestrator.cli"]


def small_config(tmp_path: Path, cache: Path, **stop) -> Path:
    cfg = {
        "archive": str(tmp_path / "archive"),
        "population": {"size": 3, "overrides": dict(TINY_OVERRIDES)},
        # a 2-s budget is a dozen steps of ~0.1 s: 50% tolerance so one slow step beside a neighbour's start-up
        # on 2 shared cores is not "trained past its budget" (the rule itself is tested in test_runner.py)
        "budget": {"seconds": 2.0, "startup_floor": 60.0, "finish_allowance": 30.0, "overrun_tolerance": 0.5},
        "data": {"corpus": "builtin", "vocab_size": 512, "cache_dir": str(cache)},
        "judge": {"seq_len": 64, "eval_tokens": 4096, "eval_batch": 8},
        "selection": {"noise_seeds": 2, "max_runs": 2, "cull_every": 3, "patience": 1, "head_runs": 3,
                      "rerun_head_runs": 4},
        "stop": {"max_trials": 6, **stop},
        "resources": {"device": "cpu", "cpu_slots": 2, "overlap": "on"},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(args, timeout=600, **kw):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(POPSEARCH + args, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def ledger(archive: Path) -> pd.DataFrame:
    return pd.read_parquet(archive / "ledger")


def kill_an_actor_mid_trial(proc: subprocess.Popen) -> tuple[int, int]:
    """SIGKILL a TrialWorker actor of this driver while a trial process of its runs; (trial pid, actor pid)."""
    deadline = time.time() + 240
    while time.time() < deadline:
        for pid in trial_processes():
            try:
                actor = parent_of(pid)
                if ("TrialWorker" in Path(f"/proc/{actor}/cmdline").read_text(errors="replace")
                        and descends_from(actor, proc.pid)):
                    os.kill(actor, signal.SIGKILL)
                    return pid, actor
            except (OSError, ValueError, IndexError):
                continue
        assert proc.poll() is None, "the run ended before a trial process under a TrialWorker actor was seen"
        time.sleep(0.3)
    raise AssertionError("no trial process under a TrialWorker actor was seen")


def test_run_to_completion_leaves_archive_ledger_and_report(tmp_path, data_spec, cache_root):
    """A population runs to its end with both proposers; an agent that breaks the rules (it edits another
    file) is recorded as rejected with its log, and the population goes on; a trial actor SIGKILLed in the
    middle of a trial has that trial run again and recorded as an infrastructure failure of an ok trial, its
    trial process gone with it (one run checks all three)."""
    cfg = small_config(tmp_path, cache_root)
    data = yaml.safe_load(cfg.read_text())
    fake = Path(__file__).parent / "fake_agent.py"
    data["proposers"] = {"weights": {"mutate": 1.0, "agent": 1.0}, "agent_concurrency": 1, "agent_timeout": 60.0,
                         "agent_command": f"{sys.executable} {fake} other notes.txt "
                                          "--program {program} --history {history}"}
    data["stop"]["max_trials"] = 8            # 2 seed runs, then room for the agent's rejections and mutations
    cfg.write_text(yaml.safe_dump(data))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(POPSEARCH + ["run", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    victim, _ = kill_an_actor_mid_trial(proc)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    archive = tmp_path / "archive"
    df = ledger(archive)
    assert len(df) >= 8
    assert "infrastructure failure" in out
    hit = df[df.infra_failures >= 1]                # recorded as infrastructure, not the candidate's fault,
    assert len(hit) >= 1 and (hit.status == "ok").all()       # and run again to a verdict (what the stop at
    # max_trials leaves pending — queued, or parked for a head's reference run — is kept for resume, as designed)
    deadline = time.time() + 10                    # the trial process died with its actor (PR_SET_PDEATHSIG)
    while time.time() < deadline and Path(f"/proc/{victim}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{victim}").exists() or "Z" in Path(f"/proc/{victim}/stat").read_text().split()[2]
    assert df["trial_id"].is_unique
    base = df[df.proposer == "baseline"]
    assert len(base) == 2 and (base.status == "ok").all()
    cands = df[~df.proposer.isin(["baseline", "reference", "agent"])]     # reference: extra runs of a head
    assert len(cands) >= 1 and set(cands.verdict) <= {"promote", "discard"}
    assert ((cands.proposer == "mutate") & (cands.status == "ok")).any(), df.reason.tolist()
    assert set(df[df.proposer == "reference"].verdict) <= {"reference"}
    agent = df[df.proposer == "agent"]
    assert len(agent) >= 1
    assert (agent.verdict == "rejected").all() and (agent.status == "invalid").all()
    assert agent.reason.str.contains("notes.txt").all()
    assert agent.agent_log.str.contains("set DEPTH to 3").all() and (agent.agent_seconds > 0).all()
    assert df.val_bpb.dropna().between(0.5, 20).all()
    arch = Archive.open(archive, writer=False)
    assert {r["trial_id"] for r in arch.trial_records()} == set(df.trial_id)
    report = archive / "report"
    for name in ("leaderboard.tsv", "progress.png", "lineage.svg"):
        assert (report / name).stat().st_size > 100, name
    assert "t00000" in out                    # a line per finished trial
    status = run_cli(["status", str(archive)])
    assert status.returncode == 0 and "m0" in status.stdout
    assert overlapped_runs(df) >= 1
    corrupt_then_repair(archive, df)


def corrupt_then_repair(archive: Path, df: pd.DataFrame) -> None:
    """A truncated ledger file is named in the error; `popsearch repair` rebuilds the same ledger from git."""
    from orchestrator import ledger as ledger_mod
    victim = sorted((archive / "ledger").glob("*.parquet"))[1]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ledger_mod.LedgerError, match=victim.name):
        ledger_mod.read(archive)
    fixed = run_cli(["repair", str(archive)], timeout=120)
    assert fixed.returncode == 0, fixed.stderr
    again = ledger(archive)
    cols = ["trial_id", "status", "verdict", "val_bpb"]
    pd.testing.assert_frame_equal(again.sort_values("trial_id")[cols].reset_index(drop=True),
                                  df.sort_values("trial_id")[cols].reset_index(drop=True))


def overlapped_runs(df: pd.DataFrame) -> int:
    """Runs that were launched on an actor before the previous run there had finished training
    (the start-up overlap) and were let go within a second of that finish."""
    import json
    runs = [r for t in df.timeline.dropna() for r in json.loads(t)]
    count = 0
    for slot in {r["slot"] for r in runs}:
        mine = sorted((r for r in runs if r["slot"] == slot), key=lambda r: r["go"])
        for prev, nxt in zip(mine, mine[1:]):
            if nxt["launch"] < prev["finish"] and abs(nxt["go"] - prev["finish"]) < 1.0:
                count += 1
    return count


def test_sigkill_driver_then_resume_loses_nothing_and_repeats_nothing(tmp_path, data_spec, cache_root):
    cfg = small_config(tmp_path, cache_root, max_trials=4)    # killed after 2 recorded: the resume runs the rest
    archive = tmp_path / "archive"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(POPSEARCH + ["run", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:             # wait for a finished trial, then kill mid-run
        if (archive / "ledger").exists() and len(list((archive / "ledger").glob("*.parquet"))) >= 2:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)       # the driver and the Ray it started go down together
    proc.wait()
    before = ledger(archive)
    assert len(before) >= 2
    arch = Archive.open(archive, writer=False)
    in_flight = {p.trial_id for p in arch.pending()}
    resumed = run_cli(["resume", str(archive)])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = ledger(archive)
    assert after["trial_id"].is_unique                           # nothing ran twice
    assert set(before.trial_id) <= set(after.trial_id)            # nothing lost
    kept = after.set_index("trial_id").loc[before.trial_id]
    assert list(kept.val_bpb.fillna(-1)) == list(before.set_index("trial_id").val_bpb.fillna(-1))
    assert in_flight & set(after.trial_id)                        # in-flight trials were dispatched again
    # A candidate still waiting for its head's reference run when the resumed run reached max_trials (the
    # reference counts as a trial) stays pending with its runs journaled, for the next resume: never lost.
    with Archive(archive, writer=False) as arch:
        state = replay(arch)
        left = {p.trial_id for p in arch.pending()}
    assert in_flight - set(after.trial_id) <= left
    assert left <= set(state.work), state.work                    # each kept with its bookkeeping
    assert all(state.work[t]["runs"] for t in left & in_flight), state.work    # ... and its runs


def test_bad_config_starts_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("archive: %s\nselection:\n  culll_every: 3\n" % (tmp_path / "a"))
    proc = run_cli(["run", str(bad)], timeout=60)
    assert proc.returncode == 2
    assert "selection.culll_every" in proc.stderr and str(bad) in proc.stderr
    assert not (tmp_path / "a").exists()


def trial_processes() -> list[int]:
    """Pids of running trial processes (the sandbox bootstrap runs every candidate)."""
    out = subprocess.run(["pgrep", "-f", "trainer.sandbox train.py"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is on pid's parent chain (this test's own driver, not another run on the machine)."""
    while pid > 1:
        if pid == ancestor:
            return True
        pid = parent_of(pid)
    return False
