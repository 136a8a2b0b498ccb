"""Untrusted candidates (issue 5): every attack in tests/candidates/attack_*.py is caught by the static check,
by the trial sandbox (python -m trainer.sandbox: exit 86 and a record of violations) and, end to end, by
run_trial with the status it must get. Real subprocesses, real torch on CPU, the real prepared corpus."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from judge import guard
from judge.landlock import landlock_abi
from trainer import sandbox
from trainer.static_check import check_source

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = Path(__file__).resolve().parent / "candidates"
RUN_TIMEOUT = 90                     # seconds for one sandboxed run (a hang is a failure, not a wait)


@dataclass
class Run:
    code: int
    output: str
    record: str
    scratch: Path

    def files(self) -> list[str]:
        return sorted(p.name for p in self.scratch.iterdir())


def run_sandboxed(tmp_path: Path, train_dir: str, source: str, budget: float = 0.5, **env) -> Run:
    """`python -m trainer.sandbox train.py` in a fresh scratch folder holding only train.py."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "train.py").write_text(source)
    record, log = tmp_path / "violations.log", tmp_path / "output.log"
    child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
                 "POPSEARCH_TRAIN_DIR": train_dir, "POPSEARCH_DEVICE": "cpu", "POPSEARCH_SEED": "0",
                 "POPSEARCH_BUDGET_SECONDS": str(budget), "POPSEARCH_THREADS": "1", "OMP_NUM_THREADS": "1",
                 sandbox.ENV_VIOLATIONS: str(record), "CUDA_VISIBLE_DEVICES": ""}
    child_env.update(env)
    child_env = {k: v for k, v in child_env.items() if v is not None}
    with open(log, "wb") as out:         # a file, not a pipe: a leftover child cannot hold it open
        proc = subprocess.run([sys.executable, "-m", "trainer.sandbox", "train.py"], cwd=scratch, env=child_env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
    text = record.read_text() if record.exists() else ""
    return Run(proc.returncode, log.read_text(errors="replace"), text, scratch)


def candidate(name: str) -> str:
    return (CANDIDATES / name).read_text()


@pytest.fixture(scope="module")
def train_dir(data_spec) -> str:
    return str(data_spec.train_dir)


# ---------------------------------------------------------------- the honest baseline is untouched

def test_baseline_passes_the_static_check(baseline_source, tiny_source):
    assert check_source(baseline_source) == []
    assert check_source(tiny_source) == []


def test_baseline_trains_in_the_sandbox(tmp_path, train_dir, tiny_source):
    run = run_sandboxed(tmp_path, train_dir, tiny_source, budget=1.0)
    assert run.code == 0, run.output
    assert run.record == "" and guard.VIOLATION_PREFIX not in run.output
    assert "weights.pt" in run.files() and "done:" in run.output
    assert f"landlock abi {landlock_abi()}" in run.output


def test_scratch_folder_must_hold_only_train_py(tmp_path, train_dir, tiny_source):
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "judge.py").write_text("raise SystemExit('shadow')\n")
    scratch = tmp_path / "scratch"
    (scratch / "train.py").write_text(tiny_source)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "POPSEARCH_TRAIN_DIR": train_dir}
    proc = subprocess.run([sys.executable, "-m", "trainer.sandbox", "train.py"], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == sandbox.SETUP_EXIT
    assert "must hold only train.py" in proc.stderr and "judge.py" in proc.stderr


# ---------------------------------------------------------------- the static check

# candidate -> what the static check must name (None: it passes; the guard or the judge handles it)
STATIC = {
    "attack_read_val.py": ["uses open", "uses os.listdir"],
    "attack_read_val_swallow.py": ["uses open", "uses .fromfile", "uses .from_file"],
    "attack_link_val.py": ["uses os.symlink", "uses os.link", "uses open"],
    "attack_shadow_judge.py": ["imports importlib", "imports sys", "uses open"],
    "attack_monkeypatch.py": ["assigns to F.cross_entropy", "assigns to judge.handoff.portable_state"],
    "attack_patch_code.py": ["uses .__code__"],
    "attack_edit_installed.py": ["uses open", "uses .__file__"],
    "attack_slow_clock.py": ["assigns to time.perf_counter", "assigns to time.time"],
    "attack_fork_bomb_lite.py": ["imports subprocess", "uses .fork"],
    "attack_network.py": ["imports socket"],
    "attack_fill_disk.py": ["uses open"],
    "attack_frame_walk.py": ["uses ._getframe", "uses .tb_frame", "uses .f_back"],
    "attack_erase_record.py": ["uses open", "uses os.truncate", "uses ._exit"],
    "attack_fake_bpb.py": None,
    "attack_memory.py": None,
    "attack_log_flood.py": None,
}


def test_every_attack_candidate_has_a_static_verdict():
    assert sorted(STATIC) == sorted(p.name for p in CANDIDATES.glob("attack_*.py"))


@pytest.mark.parametrize("name", sorted(STATIC))
def test_static_check_of_attacks(name):
    problems = check_source(candidate(name))
    if STATIC[name] is None:
        assert problems == []
        return
    assert problems and all(p.startswith("line ") for p in problems)
    for expected in STATIC[name]:
        assert any(expected in p for p in problems), (expected, problems)


@pytest.mark.parametrize("source, expected", [
    ("import torch\ngetattr(torch, 'load' + '')\n", "computed attribute name"),
    ("import torch\nx = __import__('os')\n", "uses __import__"),
    ("import torch\nG = torch.nn.functional\nG.relu = abs\n", "assigns to G.relu"),
    ("from trainer.harness import Trial\nTrial.done = lambda self: False\n", "assigns to Trial.done"),
    ("import torch\nm = torch.nn.Linear(1, 1)\ntype(m).forward = print\n", "assigns to type(m).forward"),
    ("import torch\nsetattr(torch, 'manual_seed', print)\n", "calls setattr on torch"),
    ("import torch\ntorch.serialization.os.system('x')\n", "uses .os"),
    ("import judge.evaluate\n", "imports judge.evaluate"),
    ("from . import x\n", "relative import"),
    ("import torch\nx = torch.load('w.pt')\n", "reads files with torch.load"),
    ("import torch\nx = vars(torch)\n", "uses vars"),
    ("def f(:\n", "syntax error"),
])
def test_static_check_names_the_trick(source, expected):
    problems = check_source(source)
    assert any(expected in p for p in problems), problems


def test_static_check_allows_ordinary_settings():
    source = ("import os\nimport torch\nos.environ['PYTORCH_CUDA_ALLOC_CONF'] = 'expandable_segments:True'\n"
              "torch.backends.cuda.matmul.allow_tf32 = True\ntorch._inductor.config.coordinate_descent_tuning = True\n"
              "x = getattr(torch, 'float32')\nm = torch.nn.Linear(2, 2)\nm.weight.data.zero_()\n")
    assert check_source(source) == []


# ---------------------------------------------------------------- the sandbox, run directly

@dataclass
class Case:
    name: str
    code: int                      # expected exit status
    recorded: tuple                # strings the record of violations must hold ('' record when empty)
    never: tuple = ()              # strings the candidate prints only if the attack worked
    env: tuple = ()                # extra environment
    budget: float = 0.5


CASES = [
    Case("attack_read_val.py", 86, ("outside the folders a trial may read",), ("LEAKED",)),
    Case("attack_read_val_swallow.py", 86, ("val/tokens.bin: the validation split",), ("LEAKED",)),
    Case("attack_link_val.py", 86, ("val/tokens.bin",), ("LEAKED",)),
    Case("attack_shadow_judge.py", 86, ("writes Python code", "must not be"), ("SHADOWED",)),
    Case("attack_monkeypatch.py", 86, ("replaced torch.nn.functional.cross_entropy",
                                       "replaced judge.handoff.portable_state")),
    Case("attack_patch_code.py", 86, ("__code__",), ("no weights today",)),
    Case("attack_edit_installed.py", 86, ("judge/handoff.py: outside the scratch folder",), ("EDITED",)),
    Case("attack_slow_clock.py", 86, ("replaced time.perf_counter",)),
    Case("attack_fork_bomb_lite.py", 86, ("starts a process (subprocess.Popen)", "starts a process (os.fork)"),
         ("SPAWNED",)),
    Case("attack_fork_bomb_lite.py", 86, ("not an installed compiler",), ("SPAWNED",),
         env=(("POPSEARCH_ALLOW_SUBPROCESS", "1"),)),
    Case("attack_network.py", 86, ("uses the network",), ("CONNECTED",)),
    Case("attack_fill_disk.py", 86, ("a file grew past the limit of 8 MB",), env=(("POPSEARCH_FILE_MB", "8"),)),
    Case("attack_fill_disk.py", 86, ("the scratch folder holds",), env=(("POPSEARCH_SCRATCH_MB", "24"),)),
    Case("attack_frame_walk.py", 86, ("sys._getframe", "tb_frame"), ("TAMPERED",)),
    Case("attack_fake_bpb.py", 0, ()),
    Case("attack_memory.py", 1, (), env=(("POPSEARCH_MEMORY_MB", "1200"),)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name[:-3] + "".join(f"-{k}" for k, _ in c.env))
def test_sandbox_catches(tmp_path, train_dir, case):
    run = run_sandboxed(tmp_path, train_dir, candidate(case.name), budget=case.budget, **dict(case.env))
    assert run.code == case.code, run.output[-3000:]
    for text in case.recorded:
        assert text in run.record, (text, run.record, run.output[-2000:])
    assert all(line.startswith(guard.VIOLATION_PREFIX) for line in run.record.splitlines())
    if not case.recorded:
        assert run.record == ""
    for text in case.never:
        assert text not in run.output, run.output[-2000:]


def test_swallowed_refusals_still_count(tmp_path, train_dir):
    """The candidate catches every PermissionError and trains to the end: the record still invalidates it."""
    run = run_sandboxed(tmp_path, train_dir, candidate("attack_read_val_swallow.py"))
    assert "refused (open): PermissionError" in run.output and "refused (torch)" in run.output
    assert "weights.pt" in run.files()                        # it did finish its run
    assert run.code == guard.VIOLATION_EXIT


def test_installed_files_are_unchanged(tmp_path, train_dir):
    target = REPO / "judge" / "handoff.py"
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    run = run_sandboxed(tmp_path, train_dir, candidate("attack_edit_installed.py"))
    assert run.code == guard.VIOLATION_EXIT
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before


def test_record_survives_a_candidate_that_erases_it_and_exits_zero(tmp_path, train_dir):
    """os._exit(0) skips the sandbox's final check: the record (which the candidate cannot touch) is what
    the runner must read. Here the record sits in the scratch folder (the default) and is protected there."""
    run = run_sandboxed(tmp_path, train_dir, candidate("attack_erase_record.py"),
                        **{sandbox.ENV_VIOLATIONS: None})
    record = (run.scratch / sandbox.VIOLATIONS_FILE).read_text()
    assert "val/tokens.bin" in record and "a file the trial may not change" in record
    assert "ERASED" not in run.output
    assert run.code == 0          # the exit status lies; the record does not


def test_no_process_outlives_the_fork_bomb(tmp_path, train_dir):
    run = run_sandboxed(tmp_path, train_dir, candidate("attack_fork_bomb_lite.py"))
    assert run.code == guard.VIOLATION_EXIT
    everyone = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "time.sleep(3600.25)" not in everyone


# ---------------------------------------------------------------- end to end: run_trial (runner + judge)

@pytest.fixture(scope="module")
def run_trial():
    from trainer import runner
    return runner.run_trial


def trial_spec(tmp_path, data_spec, name, **kw):
    from trainer.spec import TrialSpec
    settings = dict(budget_seconds=1.0, startup_allowance=60.0, finish_allowance=30.0, threads=1,
                    scratch_root=str(tmp_path / "scratch"), seq_len=32, eval_tokens=1024, eval_batch=4,
                    probe_positions=2)
    settings.update(kw)
    return TrialSpec(trial_id=name[:-3], source=candidate(name), data_dir=data_spec.data_dir, **settings)


def test_trial_fake_val_bpb_is_ignored(tmp_path, data_spec, run_trial):
    result = run_trial(trial_spec(tmp_path, data_spec, "attack_fake_bpb.py"))
    assert result.status == "ok", result.reason
    assert "val_bpb: 0.001000" in result.log_tail                      # it did print its fake number
    assert result.val_bpb is not None and math.isfinite(result.val_bpb) and result.val_bpb > 0.5
    assert result.training_seconds >= 0.9                              # the runner's clock, not "0.1"


@pytest.mark.parametrize("name, reason", [
    ("attack_read_val_swallow.py", "val/tokens.bin"),
    ("attack_monkeypatch.py", "replaced torch.nn.functional.cross_entropy"),
])
def test_trial_violations_are_invalid(tmp_path, data_spec, run_trial, name, reason):
    result = run_trial(trial_spec(tmp_path, data_spec, name))
    assert result.status == "invalid", (result.status, result.reason)
    assert reason in result.reason and result.val_bpb is None


def test_trial_slow_clock_is_invalid(tmp_path, data_spec, run_trial):
    result = run_trial(trial_spec(tmp_path, data_spec, "attack_slow_clock.py", finish_allowance=10.0))
    assert result.status in ("invalid", "timeout"), result.reason
    assert result.val_bpb is None
    assert result.status == "timeout" or "time.perf_counter" in result.reason or "past its budget" in result.reason


def test_trial_erased_record_is_still_invalid(tmp_path, data_spec, run_trial):
    result = run_trial(trial_spec(tmp_path, data_spec, "attack_erase_record.py"))
    assert result.status == "invalid", (result.status, result.reason)
    assert "val/tokens.bin" in result.reason and result.val_bpb is None


def test_trial_log_flood_is_capped_and_timed_out(tmp_path, data_spec, run_trial):
    cap = 50_000
    spec = trial_spec(tmp_path, data_spec, "attack_log_flood.py", finish_allowance=1.0, log_cap_bytes=cap,
                      keep_scratch=True)
    result = run_trial(spec)
    assert result.status == "timeout" and result.val_bpb is None
    [log] = list(Path(spec.scratch_root).glob("*/train.log"))
    assert cap <= log.stat().st_size <= cap + 200
