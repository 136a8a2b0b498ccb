"""A config given to an existing archive: the key-by-key differences, which keys need the flag, and the score
segment an accepted budget change starts (recorded, stamped on every row, its heads re-measured); no Ray."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from judge.verdict import HeadEstimate
from orchestrator import config_change
from orchestrator.config import Config, ConfigError, builtin_demo, load
from orchestrator.driver import Driver, save_config
from orchestrator.live import LiveBoard
from orchestrator.population import REFERENCE, head_reference, head_score, reference_runs_needed, source_hash
from orchestrator.population_state import PopulationState, Recorded
from orchestrator.proposers.base import Proposal
from trainer.constants import apply_overrides

REPO = Path(__file__).resolve().parents[1]
SLOT = {"slot": "a0", "device": "cpu", "device_name": "cpu-a", "speed": 1.0, "budget_factor": 1.0}


def test_differences_are_listed_key_by_key():
    old, new = builtin_demo(), builtin_demo()
    new.budget.seconds, new.population.size, new.stop.max_trials = 4.0, 6, 99
    new.population.overrides["DEPTH"] = 3
    changes = config_change.differences(old.to_dict(), new.to_dict())
    assert [str(c) for c in changes] == ["budget.seconds: 8.0 -> 4.0", "population.overrides.DEPTH: 2 -> 3",
                                         "population.size: 4 -> 6", "stop.max_trials: 16 -> 99"]
    gated = config_change.needs_acceptance(changes)
    assert [c.key for c in gated] == ["budget.seconds", "population.overrides.DEPTH", "population.size"]
    assert [c.key for c in gated if config_change.starts_segment(c.key)] == ["budget.seconds"]
    added = {str(c) for c in config_change.differences(Config().to_dict(), builtin_demo().to_dict())}
    assert "population.overrides.COMPILE: (unset) -> False" in added and "stop.max_trials: 0 -> 16" in added


@pytest.mark.parametrize("key, free, segment", [
    ("archive", True, False), ("stop.max_wall_seconds", True, False), ("resources.cpu_slots", True, False),
    ("resources.device", True, False), ("budget.startup_floor", True, False), ("data.cache_dir", True, False),
    ("judge.timeout_seconds", True, False), ("resources.threads_per_trial", False, True),
    ("budget.seconds", False, True), ("budget.kind", False, True), ("judge.eval_tokens", False, True),
    ("data.vocab_size", False, True), ("selection.promote_at", False, False), ("seed", False, False),
    ("proposers.weights.agent", False, False), ("population.size", False, False),
])
def test_which_keys_change_freely_and_which_start_a_segment(key, free, segment):
    assert config_change.is_free(key) is free and config_change.starts_segment(key) is segment


def test_check_refuses_with_one_line_unless_accepted(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    old = builtin_demo()
    (archive / "config.yaml").write_text(json.dumps(old.to_dict()))       # JSON is YAML
    new = builtin_demo()
    new.budget.seconds, new.archive = 4.0, "elsewhere"
    with pytest.raises(ConfigError) as err:
        config_change.check(new, archive, accept=False)
    line = str(err.value)
    assert "\n" not in line and "budget.seconds: 8.0 -> 4.0" in line and "archive" not in line.split(": ", 1)[1][:30]
    assert "--accept-config-change" in line and "new score segment" in line and f"popsearch resume {archive}" in line
    assert [str(c) for c in config_change.check(new, archive, accept=True)] == ["budget.seconds: 8.0 -> 4.0"]
    free = builtin_demo()
    free.stop.max_trials, free.resources.cpu_slots = 3, 2
    assert config_change.check(free, archive, accept=False) == []
    assert sorted(p.name for p in archive.iterdir()) == ["config.yaml"]        # checking writes nothing


@pytest.mark.parametrize("name", ["demo.yaml", "h100.yaml", "cluster.yaml"])
def test_a_config_saved_by_a_driver_reads_back_without_differences(tmp_path, name):
    cfg = load(REPO / "configs" / name)
    save_config(cfg, tmp_path)                                 # what the driver writes into the archive
    assert config_change.check(cfg, tmp_path, accept=False) == []
    assert config_change.check(load(REPO / "configs" / name), tmp_path, accept=False) == []


def small(tmp_path, **selection) -> Config:
    cfg = Config(archive=str(tmp_path / "archive"))
    cfg.population.size, cfg.stop.max_trials = 1, 50
    cfg.selection.noise_seeds, cfg.selection.max_runs = 2, 1          # σ at 1 dof: one run decides
    cfg.selection.head_runs, cfg.selection.rerun_head_runs, cfg.selection.cull_every = 2, 2, 1000
    return cfg


def started(cfg: Config) -> Driver:
    d = Driver(cfg, out=io.StringIO())
    d.open_archive()
    d.rebuild()
    d.board = LiveBoard(d.out)
    d.slots, d.actors, d.actor_load = [SLOT], [None], {0: 0}
    return d


def feed(d: Driver, value: float, budget: float):
    job = d.ready.popleft()
    d.on_result(job, {"status": "ok", "val_bpb": value, "device": "cpu-a", "budget_seconds": budget,
                      "timeline": {"launch": 1.0, "judge_end": 2.0}}, SLOT)
    return job


@pytest.mark.parametrize("section, key, value", [("budget", "seconds", 150.0), ("judge", "eval_tokens", 65536)])
def test_a_score_change_starts_a_segment_whose_head_is_measured_again(tmp_path, section, key, value):
    cfg = small(tmp_path)
    d = started(cfg)
    d.seed_baseline()
    feed(d, 2.00, cfg.budget.seconds)
    feed(d, 2.02, cfg.budget.seconds)
    seed_hash = source_hash(d.archive.source(d.archive.heads()["m0"]))
    worse = propose(d, MATRIX_LR=0.05)
    feed(d, 2.5, cfg.budget.seconds)                  # clearly worse: discarded in segment 0
    d.archive.close()

    same = started(small(tmp_path))                   # the same config: nothing recorded, the seed runs count
    assert same.segment == 0 and not (same.archive_dir / config_change.HISTORY_FILE).exists()
    assert reference_runs_needed(same.scores, seed_hash, "cpu-a", 2) == 0
    same.archive.close()

    changed = small(tmp_path)
    old = getattr(getattr(changed, section), key)
    setattr(getattr(changed, section), key, value)
    budget = changed.budget.seconds
    d = started(changed)
    [entry] = config_change.history(d.archive_dir)
    assert d.segment == 1 and entry["segment"] == 1 and entry["new_segment"]
    assert entry["changes"] == [{"key": f"{section}.{key}", "old": old, "new": value}] and entry["from_trial"] == 3
    assert reference_runs_needed(d.scores, seed_hash, "cpu-a", 2) == 2    # old runs are no reference here
    job = propose(d, MATRIX_LR=0.03)
    feed(d, 1.90, budget)                             # parked: the head has no runs in this segment yet
    ref = d.ready[0]
    assert ref.proposer == REFERENCE and ref.want_runs == 2 and job.trial_id not in rows(d).index
    feed(d, 1.80, budget)
    feed(d, 1.82, budget)
    table = rows(d)
    verdict = table.loc[job.trial_id]
    assert verdict.verdict == "discard" and verdict.head_runs == 2 and "same device (cpu-a)" in verdict.decided_by
    assert verdict.sigma_dof == 1                     # σ from this segment's head runs only, not the seed runs
    assert verdict.head_score is None or pd.isna(verdict.head_score)
    assert sorted(table["segment"]) == [0, 0, 0, 1, 1] and table.loc[ref.trial_id, "segment"] == 1
    again = propose(d, MATRIX_LR=0.05)                # byte-identical to a trial of segment 0: trained again
    assert again.hash == worse.hash and d.ready.pop() is again and d.try_reuse(again, SLOT) is False
    d.archive.close()
    assert config_change.current_segment(tmp_path / "archive") == 1


def propose(d: Driver, **constants):
    head = d.archive.heads()["m0"]
    src = apply_overrides(d.archive.source(head), constants)
    return d.enqueue(Proposal(member="m0", parent_commit=head, source=src, proposer="mutate", message=str(constants)))


def test_a_head_scored_only_in_an_earlier_segment_is_no_reference():
    state = PopulationState(segment=1)      # the state machine scores records as the driver and replay do
    state.apply(Recorded({"trial_id": "t00001", "proposer": REFERENCE, "status": "ok", "val_bpb": 2.0,
                          "device": "cpu", "segment": 0}, "h"))
    scores = state.scores
    assert head_reference(scores, "h", "cpu") == (None, "no head score")
    assert head_score(scores, "h") == 2.0 and reference_runs_needed(scores, "h", "cpu", 3) == 3
    state.apply(Recorded({"trial_id": "t00002", "proposer": REFERENCE, "status": "ok", "val_bpb": 1.0,
                          "device": "gpu", "segment": 1}, "h"))
    assert head_reference(scores, "h", "cpu") == (HeadEstimate(1.0, 1), "cross-device (gpu; no score on cpu)")
    assert head_score(scores, "h") == 1.0


def rows(d: Driver) -> pd.DataFrame:
    path = d.archive_dir / "ledger"
    return pd.read_parquet(path).set_index("trial_id") if path.exists() else pd.DataFrame()
