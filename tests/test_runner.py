"""Tests of trainer.runner with real subprocesses on CPU: ok, crash, hang, slow start, overrun, orphans,
log cap, early stopping, the go handshake; plus the pure rules (limits, early stop, MFU, env)."""
from __future__ import annotations

import math
import os
import re
import signal
import sys
import threading
from pathlib import Path

import pytest

from trainer import flops, runner
from judge.processes import alive
from trainer.runner import judge_trial, launch, run_trial
from trainer.spec import TrialSpec

CANDIDATES = Path(__file__).resolve().parent / "candidates"
FAST = dict(startup_allowance=30.0, finish_allowance=1.0, threads=1)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> str:
    """CACHE/data/<fingerprint> with an empty train/ folder: enough for candidates that read no data."""
    root = tmp_path_factory.mktemp("fake-cache") / "data" / "fake"
    (root / "train").mkdir(parents=True)
    return str(root)


@pytest.fixture
def unsandboxed(monkeypatch):
    """Run the candidate as plain `python train.py`: these tests check the runner's own process control,
    which must hold where the sandbox (trainer/sandbox.py, which refuses subprocesses) is absent or evaded."""
    monkeypatch.setattr(runner, "trial_command", lambda: [sys.executable, "train.py"])


def make_spec(tmp_path: Path, data_dir: str, candidate: str | None = None, source: str | None = None,
              **kw) -> TrialSpec:
    text = source if source is not None else (CANDIDATES / candidate).read_text()
    settings = dict(FAST, budget_seconds=2.0, scratch_root=str(tmp_path / "scratch"))
    settings.update(kw)
    return TrialSpec(trial_id=f"t-{candidate or 'src'}", source=text, data_dir=data_dir, **settings)


def pids_in_log(text: str, label: str) -> list[int]:
    return [int(m) for m in re.findall(rf"{label} pid (\d+)", text)]


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def leftover_scratch(spec: TrialSpec) -> list:
    root = Path(spec.scratch_root)
    return sorted(root.iterdir()) if root.exists() else []


# ---------------------------------------------------------------- real trials

def test_baseline_trains_and_is_judged(tmp_path, data_spec, tiny_source):
    events = []
    spec = make_spec(tmp_path, data_spec.data_dir, source=tiny_source, budget_seconds=3.0,
                     finish_allowance=30.0, eval_tokens=2048, eval_batch=4, seq_len=64, probe_positions=2)
    result = run_trial(spec, on_event=events.append)
    assert result.status == "ok", result.reason + "\n" + result.log_tail
    assert result.val_bpb is not None and math.isfinite(result.val_bpb) and result.val_bpb > 0
    assert result.params > 0 and result.steps > 0 and result.tokens > 0
    assert 0 < result.training_seconds <= runner.training_limit(spec)
    assert result.startup_seconds > 0 and result.judge_seconds > 0
    assert result.total_seconds >= result.startup_seconds + result.training_seconds
    assert result.device == "cpu" and result.mfu is None
    assert {"launch", "start", "finish", "judge_start", "judge_end"} <= set(result.timeline)
    t = result.timeline
    assert t["launch"] <= t["start"] <= t["finish"] <= t["judge_start"] <= t["judge_end"]
    assert [e["event"] for e in events][:1] == ["start"] and events[-1]["event"] == "finish"
    assert result.loss_curve and all(0 <= p for p, _ in result.loss_curve)
    assert leftover_scratch(spec) == []


def test_crash_reports_the_error(tmp_path, fake_data):
    spec = make_spec(tmp_path, fake_data, "crash.py")
    result = run_trial(spec)
    assert result.status == "crash"
    assert "deliberate crash of test candidate" in result.reason
    assert result.val_bpb is None and "judge_start" not in result.timeline
    assert leftover_scratch(spec) == []


def test_hang_times_out_and_its_process_group_is_gone(tmp_path, fake_data, unsandboxed):
    spec = make_spec(tmp_path, fake_data, "hang.py", budget_seconds=1.0, finish_allowance=0.5)
    running = launch(spec)
    running.go()
    partial = running.supervise()
    result = judge_trial(partial, spec)
    assert result.status == "timeout" and "after its start event" in result.reason
    # the runner's clock: killed once budget x (1 + tolerance) + finish allowance had passed
    assert result.training_seconds >= runner.training_limit(spec) + spec.finish_allowance
    assert group_gone(running.proc.pid)
    [child] = pids_in_log(result.log_tail, "child")
    assert not alive(child)


def test_slow_start_times_out_before_training(tmp_path, fake_data):
    spec = make_spec(tmp_path, fake_data, "sleepy_start.py", startup_allowance=2.0)
    result = run_trial(spec)
    assert result.status == "timeout" and "start-up allowance" in result.reason
    assert "start" not in result.timeline and result.training_seconds == 0.0
    assert result.total_seconds >= spec.startup_allowance


def test_training_past_the_budget_is_caught(tmp_path, fake_data):
    spec = make_spec(tmp_path, fake_data, "overrun.py", budget_seconds=1.0, finish_allowance=10.0)
    result = run_trial(spec)
    assert result.status == "invalid" and "trained past its budget" in result.reason
    assert result.training_seconds > runner.training_limit(spec)


def test_detached_grandchildren_are_killed(tmp_path, fake_data, unsandboxed):
    """Grandchildren in their own sessions escape killpg; the runner finds them by the env token it
    sets and by the descendants its /proc scans saw. What it cannot catch: a process that scrubs its
    environment AND leaves its session AND reparents before the next scan (double fork within 0.2 s)."""
    spec = make_spec(tmp_path, fake_data, "orphan.py", budget_seconds=1.0, finish_allowance=10.0)
    running = launch(spec)
    running.go()
    partial = running.supervise()
    result = judge_trial(partial, spec)
    orphans = pids_in_log(result.log_tail, "orphan")
    assert len(orphans) == 2
    assert set(orphans) <= set(partial.killed_leftovers)     # alive at the end, killed by the runner
    assert not any(alive(pid) for pid in orphans)
    assert "scratch holds ['train.log', 'train.py']" in result.log_tail
    assert result.status == "crash" and "no weights" in result.reason, result.reason


def test_log_is_capped(tmp_path, fake_data):
    cap = 100_000
    spec = make_spec(tmp_path, fake_data, "flood.py", budget_seconds=1.0, finish_allowance=0.5,
                     log_cap_bytes=cap, keep_scratch=True)
    result = run_trial(spec)
    assert result.status == "timeout"
    [scratch] = [path for path in leftover_scratch(spec) if path.is_dir()]
    log = (scratch / "train.log").read_bytes()
    assert cap <= len(log) <= cap + 200
    assert b"log capped at" in log and result.log_tail.endswith("x" * 100 + "\n")


def test_early_stop_against_a_parent_curve(tmp_path, data_spec):
    parent = [(0.0, 6.3), (0.2, 4.5), (0.5, 3.5), (1.0, 3.0)]
    spec = make_spec(tmp_path, data_spec.data_dir, "early_worse.py", budget_seconds=4.0,
                     parent_curve=parent, early_stop_margin=0.1, early_stop_min_progress=0.2)
    result = run_trial(spec)
    assert result.status == "stopped" and "early stop" in result.reason, result.reason + result.log_tail
    assert 0 < result.training_seconds < spec.budget_seconds       # GPU seconds saved
    assert result.loss_curve and result.val_bpb is None


def test_flops_mode_trains_to_its_flops_and_is_judged(tmp_path, data_spec):
    """Flops mode: the harness stops at the FLOPs budget; budget_seconds is only the wall-clock cap."""
    flops = 2e9
    spec = make_spec(tmp_path, data_spec.data_dir, "early_worse.py", budget_kind="flops", budget_flops=flops,
                     budget_seconds=60.0, finish_allowance=30.0, eval_tokens=1024, eval_batch=4, seq_len=32,
                     probe_positions=2)
    result = run_trial(spec)
    assert result.status == "ok", result.reason + result.log_tail
    assert result.budget_kind == "flops" and result.params > 0
    assert 6 * result.params * result.tokens >= flops
    assert result.training_seconds < spec.budget_seconds


def test_start_up_clock_begins_at_go(tmp_path, fake_data):
    """With wait_for_go the trial blocks in trial.start(); the start-up allowance counts from go()."""
    spec = make_spec(tmp_path, fake_data, "crash.py", wait_for_go=True, startup_allowance=2.0)
    running = launch(spec)
    timer = threading.Timer(6.0, running.go)           # past the allowance: only a clock started at go passes
    timer.start()
    partial = running.supervise()
    timer.join()
    result = judge_trial(partial, spec)
    assert result.status == "crash" and "deliberate crash" in result.reason
    assert result.timeline["launch"] < result.timeline["go"] <= result.timeline["start"]


# ---------------------------------------------------------------- rules and environment

def test_parent_loss_interpolation():
    curve = [(0.5, 3.0), (0.0, 5.0), (1.0, 2.0), (0.7, None)]
    assert runner.parent_loss_at(curve, 0.25) == pytest.approx(4.0)
    assert runner.parent_loss_at(curve, 0.75) == pytest.approx(2.5)
    assert runner.parent_loss_at(curve, -1) == 5.0 and runner.parent_loss_at(curve, 2) == 2.0
    assert runner.parent_loss_at([], 0.5) is None


def test_early_stop_rule():
    spec = TrialSpec(trial_id="x", source="", data_dir="", parent_curve=[(0.0, 4.0), (1.0, 2.0)],
                     early_stop_margin=0.1, early_stop_min_progress=0.3)
    assert "3.3000" in runner.early_stop_check(spec, 0.5, 3.4)      # parent 3.0 x 1.1 = 3.3 < 3.4
    assert "early stop" in runner.early_stop_check(spec, 0.5, 3.31)
    assert runner.early_stop_check(spec, 0.5, 3.29) == ""
    assert runner.early_stop_check(spec, 0.2, 9.0) == ""            # before min progress
    assert "non-finite" in runner.early_stop_check(spec, 0.5, None)
    off = TrialSpec(trial_id="x", source="", data_dir="", parent_curve=[(0.0, 4.0)])
    assert runner.early_stop_check(off, 0.9, 99.0) == ""             # margin 0 = off


def test_limits_and_mfu():
    spec = TrialSpec(trial_id="x", source="", data_dir="", budget_seconds=300.0, overrun_tolerance=0.05)
    assert runner.training_limit(spec) == pytest.approx(315.0)
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("cpu") is None
    assert flops.mfu(6e8, 10**10, 300.0, "NVIDIA H100 80GB HBM3") == pytest.approx(6e18 / 300 / 989e12)
    assert flops.mfu(60.0, 10, 1.0, "cpu") is None
    assert flops.mfu(None, 10, 1.0, "NVIDIA H200") is None


def test_trial_env_is_clean_and_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("SOME_SECRET_TOKEN", "hunter2")
    monkeypatch.delenv("POPSEARCH_COMPILE_CACHE", raising=False)
    cache = tmp_path / "cache"
    spec = TrialSpec(trial_id="x", source="", data_dir=str(cache / "data" / "abc"), budget_seconds=12.5,
                     seed=7, threads=2)
    env = runner.trial_env(spec, tmp_path / "s", "tok")
    assert "SOME_SECRET_TOKEN" not in env
    assert env["POPSEARCH_TRAIN_DIR"] == str(cache / "data" / "abc" / "train")
    assert env["POPSEARCH_WEIGHTS"] == str(tmp_path / "s" / "weights.pt")
    assert env["POPSEARCH_BUDGET_SECONDS"] == "12.5" and env["POPSEARCH_SEED"] == "7"
    assert env["POPSEARCH_THREADS"] == "2" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str((cache / "inductor").resolve())
    gpu = TrialSpec(trial_id="x", source="", data_dir=str(cache / "data" / "abc"), device="cuda", gpu_index="3")
    assert runner.trial_env(gpu, tmp_path, "tok")["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.setenv("POPSEARCH_COMPILE_CACHE", str(tmp_path / "cc"))
    assert runner.trial_env(spec, tmp_path, "tok")["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cc")
    # a member's trials (and their judges) share a compile cache that other members' trials never load
    spec.compile_scope = "m1"
    assert runner.trial_env(spec, tmp_path, "tok")["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cc" / "m1")
    spec.compile_scope = "../m0"
    with pytest.raises(ValueError, match="compile_scope"):
        runner.trial_env(spec, tmp_path, "tok")


def test_signal_name_in_crash_reason(tmp_path, fake_data, unsandboxed):
    source = "import os, signal\nif __name__ == '__main__':\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    result = run_trial(make_spec(tmp_path, fake_data, source=source))
    assert result.status == "crash" and signal.SIGKILL.name in result.reason


def test_weights_are_frozen_at_the_finish_event(tmp_path, data_spec):
    """Training on after trial.finish() and handing over other weights changes nothing that is judged; a
    trial still running long after its finish event is timed out; one without weights at finish crashes."""
    base = (CANDIDATES / "early_worse.py").read_text()
    swap = base + ("    import os\n    path = os.environ['POPSEARCH_WEIGHTS']\n"
                   "    open(path + '.new', 'wb').write(b'not a state dict')\n    os.replace(path + '.new', path)\n")
    kw = dict(eval_tokens=1024, eval_batch=4, seq_len=32, probe_positions=2)
    result = run_trial(make_spec(tmp_path / "a", data_spec.data_dir, source=swap, **kw))
    assert result.status == "ok" and result.val_bpb is not None, result.reason + result.log_tail
    linger = base + "    import time\n    time.sleep(30)\n"
    result = run_trial(make_spec(tmp_path / "b", data_spec.data_dir, source=linger, finish_allowance=2.0, **kw))
    assert result.status == "timeout" and "after its finish event" in result.reason
    no_model = base.replace("trial.start(model)", "trial.start()")
    result = run_trial(make_spec(tmp_path / "c", data_spec.data_dir, source=no_model, **kw))
    assert result.status == "crash" and "no weights file" in result.reason and "trial.start(model)" in result.reason
