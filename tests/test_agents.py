"""Agents as proposers: the packaged brief, history.md, the named CLI presets run by stand-ins on PATH, and the
driver's view of a member (real archive, real git worktrees, real subprocesses; no Ray needed).

Stand-ins (tests/standin_cli.py copied as claude, codex, ...) record what they got and make an edit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.config import AGENT_CLIS, Config, ConfigError, from_dict, load, validate
from orchestrator.proposers import agent, brief, history
from trainer.constants import read_constants

TESTS = Path(__file__).resolve().parent
BRIEF = "# program\nOnly train.py may change.\n"
HISTORY = "# History of member m0\nNo trials yet.\n"
FLAGS = {"claude": ["-p", "--permission-mode", "acceptEdits", "--allowedTools"],
         "codex": ["exec", "--sandbox", "workspace-write", "--cd"],
         "gemini": ["--approval-mode", "auto_edit", "--prompt"],
         "aider": ["--message-file", "--yes-always", "--no-gitignore", "train.py"],
         "opencode": ["run"]}


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=str(cwd), check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, baseline_source):
    path = tmp_path / "archive"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "t")
    git(path, "config", "user.email", "t@t")
    (path / "train.py").write_text(baseline_source)
    git(path, "add", ".")
    git(path, "commit", "-qm", "seed")
    return path, git(path, "rev-parse", "HEAD")


@pytest.fixture
def standins(tmp_path):
    """A bin folder holding a stand-in under every CLI name, and the env that puts it first on PATH."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    body = (TESTS / "standin_cli.py").read_text()
    for name in FLAGS:
        exe = bin_dir / name
        exe.write_text(f"#!{sys.executable}\n{body}")
        exe.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STANDIN_RECORD": str(record)}
    return env, record


# ----------------------------------------------------------------------------- the brief

def test_packaged_brief_is_the_default_and_popsearch_program_prints_it(capsys):
    assert brief.PACKAGED_PROGRAM.is_file() and brief.PACKAGED_PROGRAM.parent.name == "orchestrator"
    assert Config().proposers.program == "" and brief.program_path("") == brief.PACKAGED_PROGRAM
    assert cli.main(["program"]) == 0
    printed = capsys.readouterr().out
    assert printed == brief.PACKAGED_PROGRAM.read_text()
    for term in ("trial.start(model)", "trial.step(tokens=", "trial.done()", "trial.finish(**stats)", "trial.seed",
                 "trial.device", "early stopping", "FLOPs mode", "finish allowance", "Start-up limit",
                 "judge.seq_len", "# --- hyperparameters ---", "SEED_OFFSET", "never promoted",
                 "The sandbox applies to the trial, not to you", "agent timeout", "non-zero exit"):
        assert term in printed, term


def test_installed_popsearch_prints_the_shipped_brief_from_an_empty_folder(tmp_path):
    """Run from a folder holding nothing (as an installed popsearch is): the brief is the package's own file
    (CI installs the project non-editable, so this reads the installed package data)."""
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "program"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout == brief.PACKAGED_PROGRAM.read_text() and "## The Trial API" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_full_brief_carries_this_runs_numbers():
    cfg = load(None)
    text = brief.full_brief(cfg)
    assert text.startswith(brief.PACKAGED_PROGRAM.read_text().rstrip("\n"))
    assert f"judge.seq_len: {cfg.judge.seq_len} tokens" in text
    assert f"finish allowance: {cfg.budget.finish_allowance:g} s" in text
    assert f"agent timeout: {cfg.proposers.agent_timeout:g} s" in text
    assert f"{cfg.budget.startup_floor:g} s until the seed's start-up is measured" in text


def test_a_missing_configured_brief_is_a_config_error_naming_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"proposers:\n  program: {tmp_path / 'nope.md'}\n")
    with pytest.raises(ConfigError, match=r"proposers\.program.*nope\.md"):
        load(cfg)
    assert cli.main(["run", str(cfg), "--archive", str(tmp_path / "arch")]) == 2
    assert "proposers.program" in capsys.readouterr().err and not (tmp_path / "arch").exists()
    mine = tmp_path / "mine.md"
    mine.write_text("# my brief\n")
    cfg.write_text(f"proposers:\n  program: {mine}\n")
    assert brief.program_text(load(cfg).proposers.program) == "# my brief\n"


def test_agent_and_endpoint_keys_are_checked():
    with pytest.raises(ConfigError, match="proposers.agent'"):
        validate(from_dict({"proposers": {"agent": "cursor"}}))
    validate(from_dict({"proposers": {"weights": {"agent": 1.0}, "agent": "claude"}}))    # no command needed
    with pytest.raises(ConfigError, match="proposers.agent_command"):
        validate(from_dict({"proposers": {"weights": {"agent": 1.0}, "agent": "custom"}}))
    with pytest.raises(ConfigError, match="proposers.endpoint.base_url"):
        validate(from_dict({"proposers": {"weights": {"endpoint": 1.0}, "endpoint": {"model": "m"}}}))
    with pytest.raises(ConfigError, match="proposers.endpoint.prices.m"):
        validate(from_dict({"proposers": {"endpoint": {"prices": {"m": {"prompt": -1}}}}}))


# ----------------------------------------------------------------------------- the named CLIs

@pytest.mark.parametrize("name", sorted(FLAGS))
def test_named_cli_runs_non_interactively_in_the_worktree(name, repo, standins, baseline_source):
    env, record = standins
    assert name in AGENT_CLIS
    out = agent.run_agent_on_commit(repo[0], repo[1], agent.command_for(name, ""), BRIEF, HISTORY, 30.0, env=env,
                                    member="m0")
    assert out.status == "ok", (out.reason, out.log_tail)
    assert read_constants(out.source)["DEPTH"] == 3
    assert out.message == f"{name}: three layers train more steps in the same budget"
    seen = json.loads((record / f"{name}.json").read_text())
    for flag in FLAGS[name]:
        assert flag in seen["argv"], (flag, seen["argv"])
    assert BRIEF in seen["prompt"] and HISTORY.strip() in seen["prompt"] and "member m0's head" in seen["prompt"]
    assert seen["cwd"] == seen["env"]["POPSEARCH_WORKDIR"] and Path(seen["cwd"]).name == "work"
    assert not Path(seen["env"]["POPSEARCH_PROMPT"]).is_relative_to(seen["cwd"])
    assert "three layers" in out.usage["agent_log"] and out.usage["agent_seconds"] > 0


def test_a_failing_cli_keeps_its_output_with_the_outcome(repo, standins):
    env, _ = standins
    out = agent.run_agent_on_commit(repo[0], repo[1], agent.command_for("codex", ""), BRIEF, HISTORY, 30.0,
                                    env={**env, "STANDIN_FAIL": "1"})
    assert out.status == "failed" and "exited with code 2" in out.reason
    assert "codex: no credentials configured" in out.usage["agent_log"]


def test_custom_command_gets_every_placeholder(repo, tmp_path):
    seen = tmp_path / "seen"
    cmd = f"ls {{briefdir}} > {seen} && head -c 9 {{prompt}} >> {seen}"
    out = agent.run_agent_on_commit(repo[0], repo[1], agent.command_for("custom", cmd), BRIEF, HISTORY, 30.0)
    assert out.status == "no_change"
    assert seen.read_text().split()[:3] == ["agent.err", "agent.out", "history.md"]
    assert "prompt.md" in seen.read_text() and "# program" in seen.read_text()


# ----------------------------------------------------------------------------- history.md

def _trial(i: int, status: str = "ok") -> dict:
    return {"trial_id": f"t{i:05d}", "proposer": "agent", "status": status, "verdict": "discard",
            "val_bpb": 1.5 + i / 1000 if status == "ok" else None, "message": f"idea number {i}",
            "decided_by": f"mean of 1 run {1.5 + i / 1000:.6f} >= head 1.500000", "reason": "",
            "log_tail": "Traceback\n" + "\n".join(f"line {k}" for k in range(40)) + "\nCUDA out of memory",
            "diff": "\n".join(f"-OLD_{i}_{k} = 1\n+OLD_{i}_{k} = 2" for k in range(30))}


def test_history_after_50_trials_is_bounded_newest_first_with_everything_an_agent_needs():
    trials = [_trial(i, "crash" if i % 7 == 0 else "ok") for i in range(50)]
    inputs = history.HistoryInputs(
        member="m1", head_score=1.5, head_runs={"cpu": [1.49, 1.51]}, noise={"cpu": [1.49, 1.5, 1.51]},
        margins={"cpu": 0.02}, rule="Promote below head minus margin.", trials=trials,
        in_flight=[{"trial_id": "t00051", "proposer": "mutate", "message": "mutate: DEPTH 8 -> 9",
                    "diff": "-DEPTH = 8\n+DEPTH = 9"}, {"proposer": "agent", "message": "being written"}],
        others=[{"member": "m2", "head_score": 1.45, "diff": "-MATRIX_LR = 0.04\n+MATRIX_LR = 0.05"}])
    text = history.format_history(inputs)
    assert len(text) <= history.MAX_CHARS
    assert "Head val_bpb: 1.500000" in text and "runs on cpu: 1.490000, 1.510000" in text
    assert "std 0.010000 over 3 runs" in text
    assert "Promote below head minus margin." in text and "margin on cpu: 0.020000 (promote below 1.480000)" in text
    assert "+DEPTH = 9" in text and "being written" in text
    assert "### m2: head val_bpb 1.450000" in text and "+MATRIX_LR = 0.05" in text
    assert text.index("### t00049") < text.index("### t00048") and "### t00037" not in text
    crash = text[text.index("### t00042"):text.index("### t00041")]
    assert "CUDA out of memory" in crash and "line 39" in crash and "line 10" not in crash
    assert "mean of 1 run" in text and "left out to keep this file under" not in text.split("## The best")[1]


def test_history_of_a_fresh_member_says_what_is_not_known_yet():
    text = history.format_history(history.HistoryInputs(member="m0"))
    assert "not judged yet" in text and "margin: not measured yet" in text and "No trials yet." in text


def test_history_shows_imported_rows_newest_first_marked_not_compared_and_bounded():
    from orchestrator.adopt import history_lines
    entries = [{"kind": "ancestor", "Imported-From": f"{i:040x}", "Imported-Status": "keep",
                "Imported-Val-Bpb": f"1.{900 - i:03d}000", "Imported-Description": f"kept idea {i}"}
               for i in range(60)]
    entries += [{"kind": "trial", "Imported-From": "deadbee", "Imported-Status": "crash", "Imported-Val-Bpb": "0.0",
                 "Imported-Description": "oom " + "x" * 1000}]
    text = history.format_history(history.HistoryInputs(member="m0", imported=history_lines(entries)))
    section = text[text.index("## Imported history"):text.index("## The best other")]
    assert "never compared" in section and "61 entries, newest first (the last 40 shown)" in section
    assert section.index("crash") < section.index("kept idea 59") < section.index("kept idea 21")
    assert "kept idea 20" not in section and "val_bpb 1.841000 (imported)" in section
    assert max(len(line) for line in section.splitlines() if line.startswith("- ")) <= history.CELL_CHARS + 2
    small = history.format_history(history.HistoryInputs(member="m0", imported=history_lines(entries)), 3000)
    assert len(small) <= 3000 and "older entries left out" in small and "kept idea 59" in small
    assert "## Imported history" not in history.format_history(history.HistoryInputs(member="m0"))


def test_driver_history_shows_the_candidates_in_flight(tmp_path):
    from orchestrator.driver import Driver
    from orchestrator.proposers.base import Proposal
    from trainer.constants import apply_overrides
    cfg = load(None)
    cfg.archive = str(tmp_path / "pop")
    driver = Driver(cfg, out=open(os.devnull, "w"))
    driver.open_archive()
    try:
        driver.rebuild()
        head = driver.archive.heads()["m0"]
        src = apply_overrides(driver.archive.source(head), {"MODEL_DIM": 96})
        driver.enqueue(Proposal(member="m0", parent_commit=head, source=src, proposer="agent", message="wider"))
        text = history.format_history(driver.history_inputs("m0"))
        assert "### t00000 (agent): wider" in text and "+MODEL_DIM = 96" in text
        assert "P(your edit is a win)" in text and "not judged yet" in text
        assert "In flight on this member" in history.format_history(driver.history_inputs("m1"))
        assert "+MODEL_DIM" not in history.format_history(driver.history_inputs("m1"))
    finally:
        driver.archive.close()
