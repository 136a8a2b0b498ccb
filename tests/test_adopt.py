"""`popsearch adopt` for real: a small git project of an upstream-style train.py with a results.tsv, and a single
file, become populations; candidates train unmodified under the sandbox and popsearch's judge scores them."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.adopt import create_archive, read_project
from orchestrator.archive import Archive

POPSEARCH = [sys.executable, "-m", "orchestrator.cli"]
UPSTREAM = Path(__file__).resolve().parent / "candidates_adopt" / "upstream_train.py"
FAKE_BPB = 0.012345            # what the adopted script prints about itself: the judge must ignore it
HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


def run_cli(args, timeout=420):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(POPSEARCH + args, capture_output=True, text=True, timeout=timeout, env=env)


def config(tmp_path: Path, cache: Path, max_trials: int) -> Path:
    cfg = {"population": {"size": 2},
           "budget": {"seconds": 2.0, "startup_floor": 60.0},
           "data": {"corpus": "builtin", "vocab_size": 512, "cache_dir": str(cache)},
           "judge": {"seq_len": 64, "eval_tokens": 4096},
           "selection": {"noise_seeds": 1, "head_runs": 3, "rerun_head_runs": 4, "patience": 2},
           "stop": {"max_trials": max_trials},
           "resources": {"device": "cpu", "cpu_slots": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def faked(source: str) -> str:
    """The upstream script, printing a made-up val_bpb instead of what evaluate_bpb returned."""
    return source.replace('print(f"val_bpb:          {val_bpb:.6f}")', f'print("val_bpb:          {FAKE_BPB}")')


def git(folder: Path, *args) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def commit(folder: Path, source: str, message: str) -> str:
    (folder / "train.py").write_text(source)
    git(folder, "add", "train.py")
    git(folder, "commit", "-qm", message)
    return git(folder, "rev-parse", "HEAD")


@pytest.fixture
def project(tmp_path) -> Path:
    """baseline (keep), a wider model (keep), a deeper one (discard, reset away), a crash whose commit is gone."""
    folder = tmp_path / "project"
    folder.mkdir()
    git(folder, "init", "-q")
    base = UPSTREAM.read_text()
    first = commit(folder, base, "baseline")
    wider = commit(folder, faked(base.replace("N_EMBD = 32", "N_EMBD = 48")), "wider model")
    deeper = commit(folder, faked(base.replace("DEPTH = 1", "DEPTH = 3")), "deeper model")
    git(folder, "reset", "-q", "--hard", wider)
    rows = [(first, "1.900000", "0.1", "keep", "baseline"), (wider, "1.850000", "0.1", "keep", "wider model"),
            (deeper, "1.870000", "0.1", "discard", "deeper model"), ("deadbee", "0.000000", "0.0", "crash", "oom")]
    (folder / "results.tsv").write_text(HEADER + "".join("\t".join([c[:7], *rest]) + "\n" for c, *rest in rows))
    return folder


def test_adopt_a_git_project_runs_it_as_the_seed(tmp_path, project, data_spec, cache_root):
    archive_dir = tmp_path / "archive"
    proc = run_cli(["adopt", str(project), "--config", str(config(tmp_path, cache_root, max_trials=2)),
                    "--archive", str(archive_dir)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with Archive(archive_dir, writer=False) as archive:
        head = archive.heads()["m0"]
        records = archive.trial_records()
        imported = archive.imported()
        assert archive.source(archive.trial_records()[0]["parent_commit"] or head) is not None
        seed_sha = git(project, "rev-parse", "HEAD")
        seed_commit = next(e["commit"] for e in imported if e["Imported-From"] == seed_sha)
        assert archive.source(seed_commit).encode() == (project / "train.py").read_bytes()   # byte for byte
    statuses = [r["status"] for r in records]
    assert statuses and all(s == "ok" for s in statuses), [(r["status"], r["reason"]) for r in records]
    for r in records:                                         # the judge's number, not the script's
        assert r["val_bpb"] is not None and math.isfinite(r["val_bpb"]) and abs(r["val_bpb"] - FAKE_BPB) > 0.1
        assert r["training_seconds"] > 0 and r["steps"] > 0
    assert any(r["proposer"] != "baseline" for r in records)      # the mutator's candidates trained too
    kinds = [(e["kind"], e.get("Imported-Status"), e.get("Imported-Val-Bpb")) for e in imported]
    assert kinds == [("ancestor", "keep", "1.900000"), ("ancestor", "keep", "1.850000"),
                     ("trial", "discard", "1.870000"), ("trial", "crash", "0.000000")]
    deeper = next(e for e in imported if e.get("Imported-Status") == "discard")
    assert deeper["Imported-Source"] == "found"
    status = run_cli(["status", str(archive_dir)])
    assert status.returncode == 0 and "imported history" in status.stdout and "1.870000" in status.stdout
    assert "Imported history" in (archive_dir / "report" / "summary.md").read_text()


def test_imported_history_shows_in_lineage_svg_and_history_md(tmp_path, project):
    """No Ray, no training: the adopted archive's report lineage and an agent's history.md show the imported rows."""
    from orchestrator.config import load
    from orchestrator.driver import Driver
    from orchestrator.proposers.history import format_history
    from orchestrator.report import lineage_svg, snapshot
    archive_dir = create_archive(read_project(project), tmp_path / "archive", ["m0", "m1"])
    svg = lineage_svg(snapshot(archive_dir))
    lane = svg[svg.index(">imported</text>"):svg.index(">m0</text>")]         # above the members' lanes
    marks = [line.split('"')[1] for line in lane.splitlines() if line.startswith("<circle")]
    assert marks == ["imported kept", "imported kept", "imported discard", "imported crash"]
    assert "kept: val_bpb 1.900000 (imported, not compared): baseline" in lane
    assert "discard: val_bpb 1.870000 (imported, not compared): deeper model" in lane
    assert 'fill="white"' not in lane.split("discard")[0] and lane.count('fill="white"') == 2   # hollow: not kept
    assert "4 imported" in svg and "promotion" not in lane
    cfg = load(None)
    cfg.archive = str(archive_dir)
    driver = Driver(cfg, out=open(os.devnull, "w"))
    driver.open_archive()
    try:
        driver.rebuild()
        text = format_history(driver.history_inputs("m0"))
    finally:
        driver.archive.close()
    section = text[text.index("## Imported history"):text.index("## The best other")]
    assert "never compared" in section and "4 entries" in section
    assert section.index("crash") < section.index("discard") < section.index("val_bpb 1.900000 (imported)")


def test_adopt_a_single_file_keeps_it_byte_for_byte(tmp_path):
    single = tmp_path / "solo.py"
    single.write_bytes(faked(UPSTREAM.read_text()).replace("\n", "\r\n", 3).encode())   # CRLF lines stay CRLF
    project = read_project(single)
    assert (project.commits, project.runs) == ([], [])
    create_archive(project, tmp_path / "a1", ["m0", "m1"])
    with Archive(tmp_path / "a1", writer=False) as archive:
        assert {archive.source(sha).encode() for sha in archive.heads().values()} == {single.read_bytes()}
        assert [e["kind"] for e in archive.imported()] == ["ancestor"]        # the seed, from the file


def test_bad_projects_are_one_line_and_exit_2(tmp_path, cache_root):
    cfg = config(tmp_path, cache_root, max_trials=1)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.py").write_text(UPSTREAM.read_text())
    git(bad, "init", "-q")
    proc = run_cli(["adopt", str(bad), "--config", str(cfg), "--archive", str(tmp_path / "a2")])
    assert proc.returncode == 2 and "not committed at HEAD" in proc.stderr and not (tmp_path / "a2").exists()
    commit(bad, UPSTREAM.read_text(), "baseline")
    (bad / "results.tsv").write_text(HEADER + "abc1234\t1.0\t0.1\tkept\tbaseline\n")
    proc = run_cli(["adopt", str(bad), "--config", str(cfg), "--archive", str(tmp_path / "a2")])
    assert proc.returncode == 2 and "results.tsv:2: status 'kept'" in proc.stderr, proc.stderr
    assert not (tmp_path / "a2").exists()
    proc = run_cli(["adopt", str(tmp_path / "missing"), "--config", str(cfg), "--archive", str(tmp_path / "a2")])
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr and not (tmp_path / "a2").exists()
