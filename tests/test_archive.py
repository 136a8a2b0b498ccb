"""The git archive on real repositories: refs, promotions, lineage, the train.py-only rule, crashes, repair, packing.

Crashes are simulated by running the record steps partially, and for real with SIGKILL in a child process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator import archive as archive_module
from orchestrator import ledger
from orchestrator.trailers import completed_row
from orchestrator.archive import Archive, ArchiveError, ArchiveLocked, HeadMoved, parse_message, repair, source_hash

REPO = Path(__file__).resolve().parents[1]
SEED = "LR = 0.01\nDEPTH = 4\nprint('train')\n"


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def arch(tmp_path):
    with Archive.create(tmp_path / "pop", SEED, ["a", "b"], "seed") as archive:
        yield archive


def propose(archive, member, trial_id, source, proposer="mutate"):
    return archive.add_pending(member, archive.heads()[member], source, f"try {trial_id}", trial_id, proposer)


def result(val_bpb, status="ok", **extra):
    return {"status": status, "val_bpb": val_bpb, "verdict": "promote" if extra.get("promote") else "discard",
            "finished_at": time.time(), "device": "cpu", "budget_seconds": 10.0, "runs": 1,
            **{k: v for k, v in extra.items() if k != "promote"}}


def test_create_open_lock_and_excludes(tmp_path, arch):
    root = git(arch.path, "rev-parse", "seed")
    assert arch.heads() == {"a": root, "b": root}
    assert arch.source("pop/a") == SEED and arch.members() == ["a", "b"]
    assert not list(tmp_path.glob(".pop.creating-*"))
    (arch.path / "report").mkdir()
    (arch.path / "report" / "x.txt").write_text("x")
    (arch.path / "ledger" / "y.parquet").write_text("y")
    assert git(arch.path, "status", "--porcelain") == ""
    with pytest.raises(ArchiveLocked, match=str(os.getpid())):
        Archive(arch.path)
    with Archive.open(arch.path, writer=False) as reader:
        assert reader.heads() == arch.heads()
        with pytest.raises(ArchiveError, match="read-only"):
            reader.fork("c", "a")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ArchiveError, match="not a popsearch archive"):
        Archive.open(plain)
    git(plain, "init", "-q")
    with pytest.raises(ArchiveError, match="popsearch.archive"):
        Archive.open(plain)
    with pytest.raises(ArchiveError, match="not empty"):
        Archive.create(arch.path, SEED, ["z"])
    with pytest.raises(ValueError, match="member"):
        Archive.create(tmp_path / "bad", SEED, ["ok", "no/slash"])
    arch.close()
    with Archive(arch.path) as again:
        assert again.heads()["a"] == root


def test_pending_survives_reopen(arch):
    sha = propose(arch, "a", "t00001", SEED.replace("0.01", "0.02"))
    assert git(arch.path, "rev-parse", "refs/pending/t00001") == sha
    path = arch.path
    arch.close()
    with Archive(path) as again:
        (pend,) = again.pending()
        assert pend == ("t00001", sha, "a", again.heads()["a"], "mutate", "try t00001")
        assert again.source(pend.sha) == SEED.replace("0.01", "0.02")
        assert again.new_trial_id() == "t00002"
        with pytest.raises(ArchiveError, match="already used"):
            propose(again, "b", "t00001", SEED)


def test_discard_leaves_branch_and_keeps_trial_reachable(arch):
    head = arch.heads()["a"]
    pending_sha = propose(arch, "a", "t1", SEED.replace("DEPTH = 4", "DEPTH = 5"))
    sha = arch.record("t1", result(1.9), promote=False)
    assert arch.heads()["a"] == head
    assert git(arch.path, "rev-parse", "refs/trials/t1") == sha
    assert git(arch.path, "rev-parse", f"{sha}^") == head
    assert git(arch.path, "rev-parse", f"{sha}^{{tree}}") == git(arch.path, "rev-parse", f"{pending_sha}^{{tree}}")
    assert arch.pending() == []
    assert git(arch.path, "for-each-ref", "--format=%(refname)", "refs/pending") == "refs/pending/t1"   # until packing
    arch._maintain()
    assert git(arch.path, "for-each-ref", "refs/pending") == ""
    assert subprocess.run(["git", "cat-file", "-e", pending_sha], cwd=arch.path).returncode != 0    # dropped
    message, trailers = parse_message(git(arch.path, "log", "-1", "--format=%B", sha))
    assert message == "try t1"
    assert trailers["Trial-Id"] == "t1" and trailers["Status"] == "ok" and trailers["Val-Bpb"] == "1.9"
    assert trailers["Member"] == "a" and trailers["Parent"] == head and trailers["Promoted"] == "no"
    git(arch.path, "gc", "-q", "--prune=now")
    assert "DEPTH = 5" in arch.source("refs/trials/t1")
    with pytest.raises(ArchiveError, match="already recorded"):
        arch.record("t1", result(1.8), promote=False)


def test_promotion_moves_branch_and_checks_the_head(arch):
    root = arch.heads()["a"]
    propose(arch, "a", "t1", SEED.replace("0.01", "0.03"))
    propose(arch, "a", "t2", SEED.replace("0.01", "0.04"))
    sha = arch.finish("t1", result(1.5, promote=True), promote=True)["commit"]
    assert arch.heads() == {"a": sha, "b": root}
    assert git(arch.path, "diff", "--name-only", root, "pop/a") == "train.py"
    assert arch.source("pop/a") == SEED.replace("0.01", "0.03")
    with pytest.raises(HeadMoved, match="pop/a is at"):
        arch.record("t2", result(1.4), promote=True)
    assert arch.pending()[0].trial_id == "t2"          # nothing was written
    sha2 = arch.record("t2", result(1.4), promote=True, expect_head=sha)
    assert arch.heads()["a"] == sha2 and git(arch.path, "rev-parse", f"{sha2}^") == root
    assert [r["trial_id"] for r in arch.history("a")] == ["t1", "t2"]
    assert arch.standing("a")["trial_id"] == "t2" and arch.standing("b") is None
    propose(arch, "a", "t3", SEED)
    with pytest.raises(ValueError, match="only an ok trial"):
        arch.record("t3", result(None, status="crash"), promote=True)


def test_fork_retire_and_lineage_survive_reopen(arch):
    propose(arch, "a", "t1", SEED.replace("0.01", "0.05"))
    kept = arch.record("t1", result(1.2), promote=True)
    assert arch.fork("c", "a") == kept
    assert arch.heads()["c"] == kept
    last_b = arch.retire("b")
    assert arch.members() == ["a", "c"] and arch.retired() == {"b": last_b}
    assert git(arch.path, "rev-parse", "refs/retired/b") == last_b
    with pytest.raises(ArchiveError, match="already used"):
        arch.fork("b", "a")
    with pytest.raises(ArchiveError, match="not a living member"):
        arch.retire("b")
    path = arch.path
    arch.close()
    with Archive(path, writer=False) as again:
        lineage = {e.member: e for e in again.lineage()}
        assert [e.member for e in again.lineage()] == ["a", "b", "c"]
        assert lineage["c"].forked_from == "a" and lineage["a"].forked_from is None
        assert lineage["b"].retired_at >= lineage["b"].created_at and lineage["a"].retired_at is None
        assert [r["trial_id"] for r in again.history("c")] == ["t1"]      # inherited through the fork


def test_inbox_rejects_commits_that_touch_other_files(tmp_path, arch):
    clone = tmp_path / "outside"
    git(tmp_path, "clone", "-q", str(arch.path), str(clone))
    git(clone, "checkout", "-q", "-b", "work", "origin/pop/a")
    git(clone, "config", "user.email", "x@y")
    git(clone, "config", "user.name", "x")
    (clone / "train.py").write_text(SEED.replace("DEPTH = 4", "DEPTH = 6"))
    git(clone, "commit", "-qam", "deeper")
    git(clone, "push", "-q", "origin", "HEAD:refs/inbox/a/deeper")
    (clone / "notes.txt").write_text("sneaky")
    (clone / "train.py").write_text(SEED.replace("DEPTH = 4", "DEPTH = 7"))
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "deeper and a file")
    git(clone, "push", "-q", "origin", "HEAD:refs/inbox/sneaky")
    assert [ref for ref, _ in arch.inbox_refs()] == ["refs/inbox/a/deeper", "refs/inbox/sneaky"]

    good, reason = arch.consume_inbox("refs/inbox/a/deeper", "t1")
    assert reason == "" and good.member == "a" and good.parent == arch.heads()["a"]
    assert good.message == "deeper" and "DEPTH = 6" in arch.source(good.sha)
    bad, reason = arch.consume_inbox("sneaky", "t2")
    assert "notes.txt" in reason and "train.py" in reason
    assert arch.inbox_refs() == [] and [p.trial_id for p in arch.pending()] == ["t1", "t2"]
    with pytest.raises(ArchiveError, match="cannot be promoted: changes files other than train.py: notes.txt"):
        arch.record("t2", result(1.0), promote=True)
    row = arch.finish("t2", {"status": "invalid", "verdict": "rejected", "reason": reason}, promote=False)
    assert arch.heads()["a"] == good.parent
    assert "notes.txt" in ledger.read(arch.path).set_index("trial_id").loc["t2", "reason"]
    assert "notes.txt" in git(arch.path, "show", "--stat", row["commit"])       # kept for inspection
    arch.finish("t1", result(1.1), promote=True)
    assert git(arch.path, "ls-tree", "--name-only", "pop/a") == "train.py"


def test_reject_records_a_proposal_that_never_ran(arch):
    row = arch.reject("b", arch.heads()["b"], "t9", "agent", "agent edited README", "changes files other than train.py")
    assert row["status"] == "invalid" and row["verdict"] == "rejected" and row["proposer"] == "agent"
    assert ledger.trial_ids(arch.path) == {"t9"} and arch.pending() == []


def partial_record(archive, trial_id, row, promote, steps):
    """The steps of Archive._record, stopping after `steps` of them (a crash; 2 and 3 are one transaction in
    Archive._record, split here as a kill inside git's transaction could leave them)."""
    pend = archive._pending_of(trial_id)
    full = completed_row(pend, row, promote)
    head = archive._promotion_base(pend, None) if promote else None
    sha = archive._judged_commit(pend, full, head)
    if steps >= 2:
        archive._mark_judged(trial_id, sha)
    if steps >= 3 and promote:
        archive._move_branch(pend.member, sha, head)
    if steps >= 4:
        archive._drop_judged_pending()
    return sha


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("promote", [True, False])
def test_crash_between_record_steps_is_repaired(arch, steps, promote):
    root = arch.heads()["a"]
    propose(arch, "a", "t1", SEED.replace("0.01", "0.06"))
    row = result(1.3, seed=7)
    sha = partial_record(arch, "t1", row, promote, steps)
    if steps in (2, 3):
        assert arch.pending() == []                       # judged: a restarted driver must not run it again
    path = arch.path
    arch.close()                                          # the driver dies, its lock goes with it
    report = repair(path)
    with Archive(path) as again:
        if steps == 1:                                    # not committed: still pending, dispatched again
            assert [p.trial_id for p in again.pending()] == ["t1"]
            assert again.heads()["a"] == root and ledger.read(path).empty
            return
        assert again.heads()["a"] == (sha if promote else root)
        assert git(path, "for-each-ref", "refs/pending") == ""
        assert report["promotions"] == ([f"pop/a -> {sha[:10]} (trial t1)"] if promote and steps == 2 else [])
        frame = ledger.read(path)
        assert frame["trial_id"].tolist() == ["t1"] and frame.loc[0, "commit"] == sha
        assert frame.loc[0, "seed"] == 7 and bool(frame.loc[0, "promoted"]) == promote
    second = repair(path)                                 # idempotent
    assert second["promotions"] == [] and second["pending_dropped"] == [] and second["ledger"]["written"] == []


CHILD = """
import os, sys, time
from orchestrator import ledger
from orchestrator.archive import Archive
archive = Archive(sys.argv[1])
archive.add_pending("a", archive.heads()["a"], "LR = 0.5\\n", "big lr", "t1", "mutate")
ledger.Ledger.append = lambda *args: os.kill(os.getpid(), 9)      # SIGKILL between commit point and ledger row
archive.finish("t1", {"status": "ok", "val_bpb": 1.0, "finished_at": time.time()}, promote=True)
"""


def test_sigkill_during_promotion_then_repair(arch):
    path = arch.path
    arch.close()
    child = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=REPO, capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    with Archive(path) as again:                          # the dead driver's lock is gone
        trial = git(path, "rev-parse", "refs/trials/t1")
        assert again.heads()["a"] == trial and again.pending() == []      # one transaction: ref and branch
        assert [r["trial_id"] for r in again.trial_records()] == ["t1"] and ledger.read(path).empty
        report = again.repair()
        assert report["pending_dropped"] == ["t1"] and report["ledger"]["written"] == ["t1"]
        assert again.source("pop/a") == "LR = 0.5\n" and ledger.read(path)["commit"].tolist() == [trial]
    assert git(path, "fsck", "--unreachable", "--no-reflogs") == ""


def test_crash_during_fork_and_retire_is_repaired(arch):
    root = arch.heads()["a"]
    arch._log_event("fork", "c", root, "a")               # journal written, branch not yet
    arch._log_event("retire", "b", root)                  # journal written, refs not yet
    assert "c" not in arch.heads() and "b" in arch.heads()
    stale = arch.path / ".git" / "refs" / "heads" / "pop" / "a.lock"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text(root)
    os.utime(stale, (time.time() - 60, time.time() - 60))
    report = arch.repair()
    assert report["git_locks"] == [str(stale)] and not stale.exists()
    assert arch.members() == ["a", "c"] and arch.retired() == {"b": root}
    assert [(e.member, e.forked_from, e.retired_at is not None) for e in arch.lineage()] == [
        ("a", None, False), ("b", None, True), ("c", "a", False)]


def test_repair_rebuilds_an_identical_ledger_from_trailers(arch):
    propose(arch, "a", "t1", SEED.replace("0.01", "0.07"))
    arch.finish("t1", result(1.25, tokens=123456, params=98765, mfu=0.41, seed=3, margin=0.002,
                             decided_by="mean of 2 runs", runs=2, backend="sdpa", started_at=time.time() - 9,
                             message="multi-line\nmessage: with ünïcode", attempt=2, infra_failures=1,
                             budget_factor=1.5, device_speed=2.0), promote=True)
    propose(arch, "b", "t2", SEED.replace("DEPTH = 4", "DEPTH = 99"))
    arch.finish("t2", result(None, status="crash", reason="Traceback:\n  boom\nRuntimeError: x"), promote=False)
    propose(arch, "b", "t3", SEED.replace("0.01", "0.07"))
    arch.finish("t3", result(1.25, reused_from="t1", verdict="duplicate"), promote=False)
    before = ledger.read(arch.path)
    assert len(before) == 3 and before["reason"][1].endswith("RuntimeError: x")
    assert before["source_hash"].tolist() == [source_hash(SEED.replace("0.01", "0.07")),
                                              source_hash(SEED.replace("DEPTH = 4", "DEPTH = 99")),
                                              source_hash(SEED.replace("0.01", "0.07"))]
    assert set(before["parent_hash"]) == {source_hash(SEED)}
    path = arch.path
    arch.close()

    shutil.rmtree(path / "ledger")
    assert repair(path)["ledger"]["written"] == ["t1", "t2", "t3"]
    pd.testing.assert_frame_equal(ledger.read(path), before)

    (victim,) = ledger.ledger_files(path)                 # repair wrote the rows as one segment
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ledger.LedgerError, match=victim.name) as caught:
        ledger.read(path)
    assert f"popsearch repair {path}" in str(caught.value)
    report = repair(path)["ledger"]
    assert report["written"] == ["t1", "t2", "t3"] and report["moved"] == [str(Path(report["backup"]) / victim.name)]
    pd.testing.assert_frame_equal(ledger.read(path), before)
    assert (Path(report["backup"]) / victim.name).stat().st_size == 100
    pd.testing.assert_frame_equal(pd.read_parquet(path / "ledger").sort_values("finished_at")
                                  .reset_index(drop=True), before)


def test_source_hash_finds_byte_identical_candidates(arch):
    twin = SEED.replace("0.01", "0.08")
    propose(arch, "a", "t1", twin)
    arch.record("t1", result(1.4), promote=False)
    propose(arch, "b", "t2", SEED + "# different\n")
    arch.record("t2", result(1.5), promote=False)
    assert source_hash(twin) == git(arch.path, "rev-parse", "refs/trials/t1:train.py")
    assert source_hash(twin) != source_hash(twin + " ")
    by_trial = {r["trial_id"]: r["source_hash"] for r in arch.trial_records()}     # the ledger's identity column
    assert by_trial["t1"] == source_hash(twin) and by_trial["t2"] == source_hash(SEED + "# different\n")


def test_packing_keeps_refs_objects_and_packs_few_and_leaves_nothing_unreachable(arch, monkeypatch):
    monkeypatch.setattr(archive_module, "MAINTAIN_EVERY", 5)
    in_flight = propose(arch, "a", "t999", SEED + "# in flight across every packing\n")
    for i in range(23):
        member = "ab"[i % 2]
        propose(arch, member, f"t{i:03d}", SEED + f"# {i}\n")
        arch.finish(f"t{i:03d}", result(1.0 - i / 100, promote=i % 7 == 0), promote=i % 7 == 0)
    git_dir = arch.path / ".git"
    loose_trials = sorted(p.name for p in (git_dir / "refs" / "trials").glob("*"))
    assert loose_trials == ["t020", "t021", "t022"]       # the trials since the last packing (20 trials)
    assert "refs/trials/t000" in (git_dir / "packed-refs").read_text()
    loose = int(dict(line.split(": ") for line in git(arch.path, "count-objects", "-v").splitlines())["count"])
    assert loose <= 3 * 4 + 1                             # blob, tree, judged commit of 3 trials; the pending one
    assert len(list((git_dir / "objects" / "pack").glob("*.pack"))) <= 4     # rolled up geometrically
    path = arch.path
    arch.close()
    assert git(path, "fsck", "--unreachable", "--no-reflogs") == ""
    git(path, "fsck", "--no-dangling")                    # every ref's objects are there
    with Archive(path) as again:
        assert [p.trial_id for p in again.pending()] == ["t999"] and again.pending()[0].sha == in_flight
        assert again.source(in_flight).endswith("# in flight across every packing\n")
        commits = {r["trial_id"]: r["commit"] for r in again.trial_records()}
        assert len(commits) == 23 and again.heads() == {"a": commits["t014"], "b": commits["t021"]}


def test_rolled_up_keeps_a_geometric_progression():
    assert archive_module.rolled_up([(100, "big"), (40, "mid"), (10, "small")]) == []
    assert archive_module.rolled_up([(100, "big"), (30, "a"), (20, "b")]) == ["a", "b"]
    assert sorted(archive_module.rolled_up([(10, "a"), (10, "b"), (10, "c")])) == ["a", "b", "c"]
    assert archive_module.rolled_up([(10, "a")]) == []


def test_an_archive_of_the_first_layout_is_migrated_on_open(tmp_path):
    sources = [SEED + f"# {i}\n" for i in range(3)]
    with Archive.create(tmp_path / "old", SEED, ["a", "b"], "seed") as arch:
        for i, text in enumerate(sources):
            propose(arch, "a", f"t{i}", text)
            arch.finish(f"t{i}", result(1.0 + i / 10, promote=i == 1), promote=i == 1)
        rows = ledger.read(arch.path)
        path = arch.path
    # the first layout, by hand: one parquet file per trial without the hash columns, format 1, loose refs,
    # and the pending commit of a judged trial left unreachable
    for file in ledger.ledger_files(path):
        file.unlink()
    for row in rows.drop(columns=["source_hash", "parent_hash"]).to_dict("records"):
        pd.DataFrame([row]).to_parquet(path / "ledger" / ledger.file_name(row))
    git(path, "config", "popsearch.archive", "1")
    orphan = git(path, "commit-tree", "-p", "seed", "-m", "a judged trial's pending commit", "seed^{tree}")
    assert orphan in git(path, "fsck", "--unreachable", "--no-reflogs")
    with Archive(path, writer=False) as reader:          # read as it is, without migrating
        assert [r["trial_id"] for r in reader.trial_records()] == ["t0", "t1", "t2"]
        assert reader.trial_records()[0]["source_hash"] is None
    with Archive(path) as arch:
        assert git(path, "config", "popsearch.archive") == "2"
        assert [p.name for p in ledger.ledger_files(path)] == ["segment-000001.parquet"]
        frame = ledger.read(path)
        assert frame["source_hash"].tolist() == [source_hash(text) for text in sources]
        assert frame["parent_hash"].tolist() == [source_hash(SEED), source_hash(SEED), source_hash(sources[1])]
        assert frame["commit"].tolist() == rows["commit"].tolist() and frame["val_bpb"].tolist() == [1.0, 1.1, 1.2]
        assert git(path, "fsck", "--unreachable", "--no-reflogs") == ""
        propose(arch, "b", "t3", SEED + "# after\n")
        assert arch.finish("t3", result(1.3), promote=False)["parent_hash"] == source_hash(SEED)
    assert ledger.read(path)["trial_id"].tolist() == ["t0", "t1", "t2", "t3"]


def test_objects_written_without_git_read_back_as_gits_own(tmp_path):
    """gitcmd.write_object: the sha `git hash-object` gives, the bytes `git cat-file` gives back, a clean fsck."""
    from orchestrator.gitcmd import write_object
    git(tmp_path, "init", "-q")
    data = "x = 1\n# é\n".encode()
    sha = write_object(tmp_path / ".git", "blob", data)
    expected = subprocess.run(["git", "hash-object", "--stdin"], cwd=tmp_path, input=data, capture_output=True,
                              check=True).stdout.decode().strip()
    assert sha == expected
    shown = subprocess.run(["git", "cat-file", "blob", sha], cwd=tmp_path, capture_output=True, check=True).stdout
    assert shown == data
    tree = write_object(tmp_path / ".git", "tree", f"100644 train.py\0".encode() + bytes.fromhex(sha))
    assert git(tmp_path, "ls-tree", tree) == f"100644 blob {sha}\ttrain.py"
    path = tmp_path / ".git" / "objects" / sha[:2] / sha[2:]
    stamp = path.stat().st_mtime_ns
    assert write_object(tmp_path / ".git", "blob", data) == sha and path.stat().st_mtime_ns == stamp  # kept as is
    assert subprocess.run(["git", "fsck", "--full", "--strict"], cwd=tmp_path, capture_output=True).returncode == 0
