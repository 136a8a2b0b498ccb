"""State snapshots: a replay starts from the driver's last snapshot and reads only the journal after it; a
snapshot that does not fit the archive (another seed, a journal it does not end a line of, garbage) is ignored."""
from __future__ import annotations

import json
import random

import pytest

from orchestrator import state_snapshot
from orchestrator.journal import journal_path
from orchestrator.replay import replay
from test_population_state import config, finish_run, kill, start, start_run


def a_run(tmp_path, steps: int = 30):
    """A driver (without Ray) after a random run of fills, runs and results, one kill and resume included."""
    rng = random.Random(3)
    d = start(config(tmp_path, seed=3))
    d.seed_baseline()
    for step in range(steps):
        if step == steps // 2:
            d = kill(d)
        d.fill_queue()
        if d.ready:
            start_run(d, rng)
        if d.in_flight:
            finish_run(d, rng)
    return d


@pytest.fixture
def snapshotted(tmp_path):
    """a_run's driver with a state snapshot just saved; closed after the test."""
    d = a_run(tmp_path)
    d.save_snapshot()
    yield d
    d.close()


def test_a_snapshot_reads_back_as_the_state_it_was_taken_from(snapshotted):
    d = snapshotted
    body = json.loads(state_snapshot.snapshot_path(d.archive_dir).read_text())
    assert state_snapshot.decode(body["state"]) == d.state
    assert body["journal_bytes"] == journal_path(d.archive_dir).stat().st_size
    assert d.state.finished >= 10 and d.state.scores.repeated        # the state has something to carry


def test_a_replay_from_a_snapshot_reads_nothing_of_the_journal_before_it(snapshotted):
    d = snapshotted
    at = json.loads(state_snapshot.snapshot_path(d.archive_dir).read_text())["journal_bytes"]
    rng = random.Random(9)
    while not d.in_flight:                           # a repeat is answered at once, without a run
        d.fill_queue()
        start_run(d, rng)
    finish_run(d, rng)                               # lines after the snapshot, replayed from the journal
    path = journal_path(d.archive_dir)
    data = path.read_bytes()
    assert len(data) > at
    blanked = bytes(b if b == ord("\n") else ord(" ") for b in data[:at]) + data[at:]
    path.write_bytes(blanked)                        # every line before the snapshot unreadable now
    assert replay(d.archive, d.cfg.seed) == d.state
    assert replay(d.archive, d.cfg.seed, use_snapshot=False) != d.state


def test_a_snapshot_that_does_not_fit_the_archive_is_ignored(snapshotted):
    d = snapshotted
    path = state_snapshot.snapshot_path(d.archive_dir)
    good = json.loads(path.read_text())
    journal = journal_path(d.archive_dir)
    assert state_snapshot.read(d.archive_dir, d.cfg.seed, 0, journal) is not None
    assert state_snapshot.read(d.archive_dir, d.cfg.seed + 1, 0, journal) is None          # another seed
    assert state_snapshot.read(d.archive_dir, d.cfg.seed, 1, journal) is None              # another segment
    path.write_text(json.dumps({**good, "journal_bytes": good["journal_bytes"] - 3}))      # mid-line
    assert state_snapshot.read(d.archive_dir, d.cfg.seed, 0, journal) is None
    path.write_text(json.dumps({**good, "format": 99}))
    assert state_snapshot.read(d.archive_dir, d.cfg.seed, 0, journal) is None
    path.write_text('{"format": 1, "journal_bytes": 12, "state": {"seed"')                   # torn
    assert state_snapshot.read(d.archive_dir, d.cfg.seed, 0, journal) is None
    assert replay(d.archive, d.cfg.seed) == d.state                       # the whole journal instead


def test_scores_of_every_shape_read_back_equal():
    """A promotion's selection runs (in repeats, not scoring), runs at two budgets, a curve, a source judged with
    no ok run, device kinds with spaces: the columns read back as the Scores they were."""
    from orchestrator.population import Scores
    scores = Scores()

    def ok(value, budget=300.0, curve=None):
        return {"status": "ok", "val_bpb": value, "budget_seconds": budget, "loss_curve": curve}

    scores.add("a" * 40, "NVIDIA H200", ok(1.0, curve=[[0.5, 3.2], [1.0, 2.9]]), "t00001")
    scores.add("a" * 40, "NVIDIA H200", ok(1.1), "t00004")
    scores.add("b" * 40, "NVIDIA H200", ok(0.9), "t00002", scores_it=False)     # a promotion's selection run
    scores.add("b" * 40, "NVIDIA H200", ok(0.95), "t00002")
    scores.add("b" * 40, "cpu x", ok(2.0, budget=60.0), "t00003")
    scores.add("b" * 40, "cpu x", ok(2.1, budget=120.0), "t00005")
    scores.add("c" * 40, "cpu x", {"status": "crash", "val_bpb": None}, "t00006")
    data = json.loads(json.dumps(state_snapshot.encode_scores(scores)))
    back = state_snapshot.decode_scores(data)
    assert back == scores
    back.add("a" * 40, "NVIDIA H200", ok(1.2), "t00007")                   # lists are not shared
    key = ("a" * 40, "NVIDIA H200")
    assert back.repeats[(*key, 300.0)] == back.by_source[key] == [1.0, 1.1, 1.2]
    assert scores.by_source[("a" * 40, "NVIDIA H200")] == [1.0, 1.1]
