"""Proposers on real things: mutate on the shipped train.py, the agent proposer with tests/fake_agent.py in
real git worktrees, the inbox with real refs and patch files.

Every git repository lives in tmp_path; agents are real subprocesses, killed by process group."""
from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from judge.processes import group_alive
from orchestrator.proposers import agent, inbox, mutate
from orchestrator.proposers.base import Proposal, only_train_py_changed, validate_source
from trainer.constants import constants_span, read_constants

TESTS = Path(__file__).resolve().parent
FAKE = TESTS / "fake_agent.py"
BRIEF = "# program\nOnly train.py may change.\n"
HISTORY = "# History of member m0\nNo trials yet.\n"


# ----------------------------------------------------------------------------- base

def test_only_train_py_changed():
    assert only_train_py_changed(["train.py"]) == (True, "")
    assert only_train_py_changed(["./train.py", "train.py"]) == (True, "")
    ok, reason = only_train_py_changed(["train.py", "judge/evaluate.py", "notes.md"])
    assert not ok and "judge/evaluate.py, notes.md" in reason
    assert only_train_py_changed([]) == (False, "no file changed")


def test_validate_source(baseline_source):
    assert validate_source(baseline_source) == (True, "")
    ok, reason = validate_source(baseline_source + "\ndef broken(:\n")
    assert not ok and "syntax error" in reason and "line" in reason
    ok, reason = validate_source(baseline_source.replace("def build_model(", "def make_model("))
    assert not ok and "build_model" in reason
    ok, reason = validate_source(baseline_source.replace("def build_model():", "def build_model(vocab):"))
    assert not ok and "no required arguments" in reason
    ok, reason = validate_source(baseline_source.replace('if __name__ == "__main__":', "if True:"))
    assert not ok and "__main__" in reason


# ----------------------------------------------------------------------------- mutate

def _check_mutation(parent: str, child: str, message: str, old: dict | None = None) -> dict:
    """The changed constants of one mutation, after asserting every rule a mutation must keep."""
    assert validate_source(child) == (True, "")
    old, new = old or read_constants(parent), read_constants(child)
    assert old.keys() == new.keys()
    changed = {k: new[k] for k in old if new[k] != old[k]}
    assert 1 <= len(changed) <= 2, message
    for name, value in changed.items():
        assert "SEED" not in name and name != "COMPILE"
        assert type(value) is type(old[name]), name
        assert f"{name} {old[name]!r} -> {value!r}" in message
    assert new["MODEL_DIM"] % new["N_HEADS"] == 0 and (new["MODEL_DIM"] // new["N_HEADS"]) % 2 == 0
    assert new["TOTAL_BATCH_SIZE"] % (new["DEVICE_BATCH_SIZE"] * new["SEQ_LEN"]) == 0
    assert new["SHORT_WINDOW"] <= new["SEQ_LEN"] and new["VE_GATE_CHANNELS"] <= new["MODEL_DIM"]
    assert 0 <= new["WARMUP_FRACTION"] and 0 <= new["COOLDOWN_FRACTION"]
    assert new["WARMUP_FRACTION"] + new["COOLDOWN_FRACTION"] <= 1
    assert 0 < new["MUON_MOMENTUM"] < 1 and 0 <= new["MUON_MOMENTUM_WARMUP"] <= 1
    assert set(new["WINDOW_PATTERN"]) <= {"S", "L"} and new["WINDOW_PATTERN"]
    assert all(v >= 1 for k, v in new.items() if isinstance(v, int) and not isinstance(v, bool) and old[k] >= 1)
    start, end = constants_span(parent)
    p_lines, c_lines = parent.splitlines(), child.splitlines()
    assert p_lines[:start] == c_lines[:start] and p_lines[end - 1:] == c_lines[end - 1:]
    return changed


@pytest.mark.parametrize("which,draws", [("baseline", 200), ("tiny", 100)])
def test_mutate_draws_keep_every_rule(which, draws, baseline_source, tiny_source):
    parent = baseline_source if which == "baseline" else tiny_source
    rng = random.Random(1234)
    old = read_constants(parent)
    counts = {1: 0, 2: 0}
    touched = set()
    for _ in range(draws):
        child, message = mutate.propose(parent, rng, max_changes=2)
        assert message.startswith("mutate: ")
        changed = _check_mutation(parent, child, message, old)
        counts[len(changed)] += 1
        touched |= set(changed)
    assert counts[1] > draws // 10 and counts[2] > draws // 10
    assert {"MATRIX_LR", "DEPTH", "WINDOW_PATTERN", "DEVICE_BATCH_SIZE"} <= touched


def test_mutate_is_deterministic_and_respects_max_changes_and_bounds(baseline_source):
    a = [mutate.propose(baseline_source, random.Random(9)) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(2)
    for _ in range(50):
        child, message = mutate.propose(baseline_source, rng, max_changes=1, bounds={"SEQ_LEN": (2048, 2048)})
        changed = _check_mutation(baseline_source, child, message)
        assert len(changed) == 1 and "SEQ_LEN" not in changed


def test_mutate_value_rules():
    rng = random.Random(0)
    values = {mutate.mutate_value("MATRIX_LR", 0.04, rng) for _ in range(100)}
    assert values == {0.02, 0.028, 0.056, 0.08}
    assert {mutate.mutate_value("DEPTH", 8, rng) for _ in range(50)} == {7, 9}
    assert {mutate.mutate_value("DEVICE_BATCH_SIZE", 32, rng) for _ in range(50)} == {16, 64}
    assert {mutate.mutate_value("MODEL_DIM", 512, rng) for _ in range(50)} == {384, 640}
    assert mutate.mutate_value("USE_X", True, rng) is False
    assert mutate.mutate_value("WINDOW_PATTERN", "SSSL", rng) in set(mutate.PATTERNS) - {"SSSL"}
    assert {mutate.mutate_value("MUON_MOMENTUM", 0.95, rng) for _ in range(100)} == {0.975, 0.965, 0.93, 0.9}
    assert mutate.mutate_value("WEIGHT_DECAY", 0.0, rng) in mutate.ZERO_FLOAT_STARTS
    assert mutate.is_protected("SEED_OFFSET") and mutate.is_protected("DATA_SEED") and mutate.is_protected("COMPILE")


def test_mutate_keeps_upstream_widths_divisible_by_their_head_count():
    upstream = (TESTS / "candidates_adopt" / "upstream_train.py").read_text()
    old = read_constants(upstream)
    assert (old["N_EMBD"], old["N_HEAD"]) == (32, 2)
    assert "N_EMBD 32 must split into N_HEAD 3" in mutate.check_constraints(old, {**old, "N_HEAD": 3})
    assert mutate.check_constraints(old, {**old, "N_HEAD": 1}) == ""
    rng = random.Random(3)
    heads = set()
    for _ in range(150):
        new = read_constants(mutate.propose(upstream, rng)[0])
        assert new["N_EMBD"] % new["N_HEAD"] == 0 and (new["N_EMBD"] // new["N_HEAD"]) % 2 == 0, new
        heads.add(new["N_HEAD"])
    assert heads - {2}                                      # the head count did move
    source = upstream.replace("DEPTH = 1\n", "DEPTH = 1\nH100_BF16_PEAK_FLOPS = 989.5e12\n")
    assert "H100_BF16_PEAK_FLOPS" in read_constants(source)                  # only prints MFU: never mutated
    assert "H100_BF16_PEAK_FLOPS" not in mutate.mutable_constants(source)


def test_mutate_without_mutable_constants_names_the_problem():
    source = "# --- hyperparameters ---\nSEED_OFFSET = 0\nCOMPILE = True\n# --- end hyperparameters ---\n"
    with pytest.raises(ValueError, match="no mutable constants"):
        mutate.propose(source, random.Random(0))


def test_mutated_tiny_models_build_and_run(tiny_source, tmp_path, monkeypatch):
    """The constraints are the real ones: mutated tiny train.py files build a model that accepts the
    judge's row length (up to 4 x SEQ_LEN)."""
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    (train_dir / "meta.json").write_text(json.dumps({"vocab_size": 96, "bos_id": 95, "token_dtype": "uint16",
                                                     "n_tokens": 0, "n_docs": 0}))
    monkeypatch.setenv("POPSEARCH_TRAIN_DIR", str(train_dir))
    torch.set_num_threads(1)
    rng = random.Random(5)
    for i in range(6):
        child, _ = mutate.propose(tiny_source, rng)
        path = tmp_path / f"cand{i}.py"
        path.write_text(child)
        spec = importlib.util.spec_from_file_location(f"cand{i}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.build_model()
        T = 2 * module.SEQ_LEN
        with torch.no_grad():
            logits = model(torch.zeros(1, T, dtype=torch.long))
        assert logits.shape == (1, T, 96) and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------- agent

def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=str(cwd), check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, baseline_source) -> tuple[Path, str]:
    """A git repository holding train.py (and a README) in one commit: (path, sha)."""
    path = tmp_path / "archive"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "t")
    git(path, "config", "user.email", "t@t")
    (path / "train.py").write_text(baseline_source)
    (path / "README.md").write_text("archive\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "seed")
    return path, git(path, "rev-parse", "HEAD")


def fake(behaviour: str) -> str:
    return f"{sys.executable} {FAKE} {behaviour} --program {{program}} --history {{history}}"


def run_fake(repo, behaviour, timeout=30.0, scratch=None):
    path, sha = repo
    return agent.run_agent_on_commit(path, sha, fake(behaviour), BRIEF, HISTORY, timeout, scratch_root=scratch)


def test_agent_edit_with_commit_gives_its_message_and_cleans_up(repo, tmp_path):
    scratch = tmp_path / "scratch dir"                     # a space in the path: placeholders are quoted
    scratch.mkdir()
    out = run_fake(repo, "edit DEPTH 3 --commit 'deeper is not always better'", scratch=scratch)
    assert out.status == "ok", out
    assert read_constants(out.source)["DEPTH"] == 3
    assert out.message == "deeper is not always better"
    assert list(scratch.iterdir()) == []
    assert git(repo[0], "worktree", "list").count("\n") == 0   # only the main worktree is left
    prop = agent.to_proposal(out, "m0", repo[1])
    assert isinstance(prop, Proposal) and prop.proposer == "agent" and prop.source == out.source


def test_agent_edit_without_commit_uses_last_stdout_line(repo):
    out = run_fake(repo, "edit MATRIX_LR 0.03")
    assert out.status == "ok" and out.message == "set MATRIX_LR to 0.03"
    assert read_constants(out.source)["MATRIX_LR"] == 0.03


@pytest.mark.parametrize("other", ["judge.py", "sub/dir/evil.txt", "README.md"])
def test_agent_touching_another_file_is_rejected_naming_it(repo, other):
    out = run_fake(repo, f"other {other}")
    assert out.status == "rejected" and out.source is None
    assert out.files == [other] and other in out.reason


def test_agent_bytecode_byproducts_are_not_changes(repo):
    out = run_fake(repo, "pycache")
    assert out.status == "ok", out.reason


@pytest.mark.parametrize("behaviour,status,words", [
    ("noop", "no_change", "unchanged"),
    ("invalid", "rejected", "syntax error"),
    ("delete", "rejected", "deleted train.py"),
    ("exit 3", "failed", "exited with code 3"),
])
def test_agent_outcomes(repo, behaviour, status, words):
    out = run_fake(repo, behaviour)
    assert out.status == status and words in out.reason and out.source is None
    if status == "failed":
        assert out.returncode == 3 and "giving up" in out.log_tail


def test_agent_hang_is_killed_with_its_process_group(repo, tmp_path):
    pidfile = tmp_path / "pids"
    out = run_fake(repo, f"hang --pidfile {pidfile}", timeout=2.0)
    assert out.status == "timeout" and "timeout" in out.reason
    pgid, pid, child = map(int, pidfile.read_text().split())
    assert not group_alive(pgid)
    for p in (pid, child):
        stat = Path(f"/proc/{p}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert git(repo[0], "worktree", "list").count("\n") == 0


def test_agent_on_an_unknown_commit_fails_with_a_reason(repo):
    out = agent.run_agent_on_commit(repo[0], "0" * 40, fake("noop"), BRIEF, HISTORY, 30.0)
    assert out.status == "failed" and "worktree" in out.reason and "0000000000" in out.reason


def test_agent_brief_files_are_outside_the_worktree(repo, tmp_path):
    """The agent sees program.md and history.md by path; neither lands in the candidate's tree."""
    seen = tmp_path / "seen"
    cmd = f"cat {{program}} {{history}} > {seen} && echo \"${{POPSEARCH_WORKDIR}}\" >> {seen} && pwd >> {seen}"
    out = agent.run_agent_on_commit(repo[0], repo[1], cmd, BRIEF, HISTORY, 30.0)
    assert out.status == "no_change"
    text = seen.read_text()
    assert BRIEF in text and HISTORY in text
    workdir = text.strip().splitlines()[-1]
    assert text.strip().splitlines()[-2] == workdir


def test_format_command():
    cmd = agent.format_command("run --dir {workdir} --p {program} ${HOME} awk '{print}' {history}",
                               "/a b", "/p.md", "/h.md")
    assert cmd == "run --dir '/a b' --p /p.md ${HOME} awk '{print}' /h.md"


# ----------------------------------------------------------------------------- inbox

@pytest.fixture
def archive(tmp_path, baseline_source):
    from orchestrator.archive import Archive
    arch = Archive.create(tmp_path / "pop", baseline_source, ["m0", "m1"])
    yield arch
    arch.close()


def outside_commit(archive, tmp_path, base: str, overrides: dict, message: str, extra_file: str = "") -> Path:
    """A clone of the archive (as an outside agent or person would have) with one commit on `base`."""
    from trainer.constants import apply_overrides
    clone = tmp_path / f"clone-{len(list(tmp_path.glob('clone-*')))}"
    git(tmp_path, "clone", "-q", str(archive.path), str(clone))
    git(clone, "config", "user.name", "outsider")
    git(clone, "config", "user.email", "o@o")
    git(clone, "checkout", "-q", "--detach", base)
    (clone / "train.py").write_text(apply_overrides((clone / "train.py").read_text(), overrides))
    if extra_file:
        (clone / extra_file).write_text("hello\n")
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", message)
    return clone


def test_inbox_ref_is_picked_up_once(archive, tmp_path):
    head = archive.heads()["m1"]
    clone = outside_commit(archive, tmp_path, head, {"MATRIX_LR": 0.03}, "higher matrix lr")
    git(clone, "push", "-q", "origin", "HEAD:refs/inbox/m1/lr")
    props = inbox.scan_inbox(archive)
    assert len(props) == 1
    p = props[0]
    assert (p.member, p.parent_commit, p.proposer, p.message) == ("m1", head, "inbox", "higher matrix lr")
    assert read_constants(p.source)["MATRIX_LR"] == 0.03
    assert p.trial_id and [q.trial_id for q in archive.pending()] == [p.trial_id]
    assert archive.source(p.extra["pending_commit"]) == p.source
    assert archive.inbox_refs() == []
    assert inbox.scan_inbox(archive) == []


def test_inbox_ref_member_trailer_names_the_member(archive, tmp_path):
    seed = archive.heads()["m0"]                       # both members still sit on the seed commit
    clone = outside_commit(archive, tmp_path, seed, {"DEPTH": 6}, "shallower\n\nMember: m1")
    git(clone, "push", "-q", "origin", "HEAD:refs/inbox/shallower")
    ids = iter(["t00042"])
    props = inbox.scan_inbox(archive, new_trial_id=lambda: next(ids))
    assert [(p.member, p.trial_id) for p in props] == [("m1", "t00042")]


def test_inbox_ref_touching_another_file_is_rejected_and_recorded(archive, tmp_path):
    clone = outside_commit(archive, tmp_path, archive.heads()["m0"], {"DEPTH": 6}, "sneaky", extra_file="notes.md")
    git(clone, "push", "-q", "origin", "HEAD:refs/inbox/m0/sneaky")
    git(clone, "checkout", "-q", "--orphan", "stray")             # a commit with no known parent
    git(clone, "commit", "-qm", "from nowhere")
    git(clone, "push", "-q", "origin", "HEAD:refs/inbox/stray")
    lines = []
    assert inbox.scan_inbox(archive, on_reject=lines.append) == []
    assert archive.inbox_refs() == [] and archive.pending() == []
    records = {r["message"]: r for r in archive.trial_records()}
    assert records["sneaky"]["status"] == "invalid" and "notes.md" in records["sneaky"]["reason"]
    assert records["from nowhere"]["status"] == "invalid" and "0 parents" in records["from nowhere"]["reason"]
    assert len(lines) == 2 and any("notes.md" in line for line in lines)


def _plain_diff(old: str, new: str, header: str = "") -> str:
    import difflib
    return header + "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                                 "train.py.orig", "train.py"))


def test_inbox_patches_are_applied_or_rejected_once(archive, tmp_path, baseline_source):
    from trainer.constants import apply_overrides
    folder = Path(archive.path) / "inbox"
    folder.mkdir()
    seed = archive.heads()["m0"]
    clone = outside_commit(archive, tmp_path, seed, {"DEPTH": 10}, "deeper\n\nten blocks fit the budget")
    (folder / "m0--deeper.patch").write_text(git(clone, "format-patch", "-1", "--stdout") + "\n")
    lr = apply_overrides(baseline_source, {"EMBED_LR": 0.3})
    (folder / "idea.diff").write_text(_plain_diff(baseline_source, lr, "Faster embeddings.\nMember: m1\n"))
    evil = outside_commit(archive, tmp_path, seed, {"DEPTH": 9}, "evil", extra_file="judge.py")
    (folder / "m1--evil.patch").write_text(git(evil, "format-patch", "-1", "--stdout") + "\n")
    stale = _plain_diff(apply_overrides(baseline_source, {"DEPTH": 3}), apply_overrides(baseline_source, {"DEPTH": 4}))
    (folder / "m1--stale.patch").write_text(stale)
    (folder / "nobody.patch").write_text(_plain_diff(baseline_source, lr))
    (folder / "notes.txt").write_text("not a patch\n")
    (folder / ".m0--partial.patch").write_text("being written")
    props = inbox.scan_inbox(archive)
    got = {p.member: p for p in props}
    assert sorted(got) == ["m0", "m1"] and all(p.trial_id is None and p.parent_commit == seed for p in props)
    assert read_constants(got["m0"].source)["DEPTH"] == 10
    assert got["m0"].message == "deeper\n\nten blocks fit the budget"
    assert read_constants(got["m1"].source)["EMBED_LR"] == 0.3 and got["m1"].message == "Faster embeddings."
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["idea.diff", "m0--deeper.patch"]
    reasons = {p.name[:-len(".reason")]: p.read_text() for p in (folder / "rejected").glob("*.reason")}
    assert sorted(reasons) == ["m1--evil.patch", "m1--stale.patch", "nobody.patch"]
    assert "judge.py" in reasons["m1--evil.patch"]
    assert "does not apply" in reasons["m1--stale.patch"]
    assert "no member named" in reasons["nobody.patch"]
    assert (folder / "rejected" / "m1--evil.patch").exists()
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [".m0--partial.patch", "notes.txt"]
    assert inbox.scan_inbox(archive) == []
