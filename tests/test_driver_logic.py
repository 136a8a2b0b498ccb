"""The driver's decisions without Ray: seed runs and margin, re-runs inside the margin, same-device
reference runs, seed-only changes and reuse of byte-identical candidates, on a real git archive."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from orchestrator.config import Config
from orchestrator.driver import Driver
from orchestrator.live import LiveBoard
from orchestrator.population import REFERENCE
from orchestrator.proposers.base import Proposal
from trainer.constants import apply_overrides, read_constants

SLOTS = [{"slot": "a0", "device": "cpu", "device_name": "cpu-a", "speed": 1.0, "budget_factor": 1.0},
         {"slot": "b0", "device": "cpu", "device_name": "cpu-b", "speed": 0.5, "budget_factor": 2.0}]


@pytest.fixture
def driver(tmp_path):
    cfg = Config(archive=str(tmp_path / "archive"))
    cfg.population.size = 2
    cfg.selection.noise_seeds = 3         # σ at 2 dof (at 1 dof, a Student t believes almost no gap)
    cfg.selection.max_runs = 2
    cfg.selection.head_runs = 3           # the seed's 3 runs suffice: no reference runs on cpu-a
    cfg.selection.rerun_head_runs = 3     # nor before a re-run is decided
    cfg.selection.cull_every = 0
    cfg.stop.max_trials = 16              # Config() sets no limit; budget_left counts down from this
    d = Driver(cfg, out=io.StringIO())
    d.open_archive()
    d.rebuild()
    d.board = LiveBoard(d.out)
    d.slots, d.actors, d.actor_load = SLOTS, [None, None], {0: 0, 1: 0}
    yield d
    d.archive.close()


def result(val, device="cpu-a", status="ok"):
    return {"status": status, "val_bpb": val, "device": device, "training_seconds": 1.0,
            "timeline": {"launch": 1.0, "go": 1.0, "start": 1.5, "finish": 2.5, "judge_end": 3.0}}


def feed(d: Driver, value, device="cpu-a", slot=0):
    job = d.ready.popleft()
    d.on_result(job, result(value, device), SLOTS[slot])
    return job


def candidate(d: Driver, member="m0", **changes) -> Proposal:
    head = d.archive.heads()[member]
    src = d.archive.source(head)
    consts = read_constants(src)
    new = apply_overrides(src, {k: type(consts[k])(v) for k, v in changes.items()})
    return d.enqueue(Proposal(member=member, parent_commit=head, source=new, proposer="mutate", message=str(changes)))


def rows(d: Driver) -> pd.DataFrame:
    return pd.read_parquet(d.archive_dir / "ledger").set_index("trial_id")


def seed(d: Driver):
    d.seed_baseline()
    for value in (2.00, 2.02, 2.01):
        feed(d, value)
    return d.scores.noise("cpu-a", None)


def test_seed_runs_set_the_noise_and_the_heads(driver):
    noise = seed(driver)
    assert noise.sigma == pytest.approx(pd.Series([2.00, 2.02, 2.01]).std()) and noise.dof == 2
    assert all(driver.states[m].head_score == pytest.approx(2.01) for m in ("m0", "m1"))
    assert set(rows(driver).verdict) == {"baseline"}


def test_clear_gain_is_promoted_and_moves_the_branch(driver):
    seed(driver)
    job = candidate(driver, MATRIX_LR=0.03)
    feed(driver, 1.75)                        # P(win) clears the bar on one run
    row = rows(driver).loc[job.trial_id]
    assert row.verdict == "promote" and row.promoted and row.selection_runs == 1
    assert driver.archive.heads()["m0"] == row.commit
    assert "same device (cpu-a)" in row.decided_by and row.sigma_dof >= 1 and row.evidence >= row.bar
    assert row.effect < 0 and row.effect_se == pytest.approx((1 + 1 / 3) ** 0.5)
    assert 1.75 < row.head_score < 2.01 and row.head_weight > 0        # the lucky run is shrunk toward the head
    assert driver.states["m0"].head_score == pytest.approx(row.head_score)
    assert driver.scores.runs(job.hash, "cpu-a") == []                  # the selecting run does not score it


def test_small_gain_is_rerun_with_the_trials_next_seed_then_judged_on_the_mean(driver):
    seed(driver)
    job = candidate(driver, MATRIX_LR=0.03)
    first_seed = job.next_seed()
    feed(driver, 1.98)                        # better, but short of the bar: a second run with a new seed
    assert driver.ready and driver.ready[0] is job and job.next_seed() == first_seed + 1
    feed(driver, 2.012)
    row = rows(driver).loc[job.trial_id]
    assert row.verdict == "discard" and row.runs == 2
    assert json.loads(row.run_scores) == [1.98, 2.012]


def test_run_seeds_are_a_pure_function_of_trial_and_run_and_never_collide():
    from orchestrator.population import run_seed
    seeds = {run_seed(f"t{k:05d}", i) for k in range(50) for i in range(20)}
    assert len(seeds) == 1000 and run_seed("t00007", 2) == run_seed("t00007", 2) == 7002
    with pytest.raises(ValueError):
        run_seed("t00001", 1000)


def test_seed_only_change_is_never_promoted(driver):
    seed(driver)
    job = candidate(driver, SEED_OFFSET=7)
    feed(driver, 1.5)
    row = rows(driver).loc[job.trial_id]
    assert row.verdict == "discard" and "seed" in row.decided_by


def test_other_device_kind_gets_a_reference_run_of_the_head_first(driver):
    seed(driver)                              # the seed was measured on cpu-a only
    job = candidate(driver, MATRIX_LR=0.03)
    feed(driver, 2.20, device="cpu-b", slot=1)  # slower kind: worse than the cpu-a head, better than its own
    ref = driver.ready[0]
    assert ref.proposer == REFERENCE and ref.device_kind == "cpu-b"
    assert driver.next_dispatch(per_actor=1)[1] == 1          # only an actor of kind cpu-b may take it
    driver.ready.appendleft(ref)
    for value in (2.40, 2.41, 2.42):                    # the head's runs there (head_runs 3): then decided
        feed(driver, value, device="cpu-b", slot=1)
    table = rows(driver)
    assert table.loc[ref.trial_id].verdict == "reference"
    row = table.loc[job.trial_id]
    assert row.verdict == "promote" and "same device (cpu-b)" in row.decided_by


def test_byte_identical_candidate_is_not_trained_again(driver):
    seed(driver)
    first = candidate(driver, MATRIX_LR=0.03)
    feed(driver, 2.05)
    again = candidate(driver, MATRIX_LR=0.03)
    driver.dispatch()                          # try_reuse answers it without an actor
    row = rows(driver).loc[again.trial_id]
    assert row.reused_from == first.trial_id and row.verdict == "discard"
    assert not driver.ready and not driver.in_flight



def test_repeat_is_reused_from_another_device_kind(driver):
    """Judged on cpu-b only; the repeat is picked for a cpu-a actor and still not trained again."""
    seed(driver)
    first = candidate(driver, MATRIX_LR=0.03)
    feed(driver, 2.20, device="cpu-b", slot=1)
    for value in (2.40, 2.41, 2.42):                    # the head's reference runs on cpu-b decide it
        feed(driver, value, device="cpu-b", slot=1)
    again = candidate(driver, MATRIX_LR=0.03)
    driver.dispatch()
    row = rows(driver).loc[again.trial_id]
    assert row.reused_from == first.trial_id and row.device == "cpu-b" and row.slot == "b0"
    assert not driver.in_flight

def test_flops_budget_caps_time_by_device_speed():
    from orchestrator import budget
    from orchestrator.population import Job
    cfg = Config()
    cfg.budget.kind, cfg.budget.flops, cfg.budget.seconds = "flops", 1e13, 1.0
    job = Job(trial_id="t1", member="m0", parent_commit="", commit="", source="", proposer="mutate", message="")
    slow = budget.trial_spec(cfg, job, {"device": "cpu", "speed": 10.0, "budget_factor": 1.0}, "/d", 0, 30.0)
    fast = budget.trial_spec(cfg, job, {"device": "cpu", "speed": 20.0, "budget_factor": 1.0}, "/d", 0, 30.0)
    assert slow.budget_kind == "flops" and slow.budget_flops == 1e13
    assert slow.budget_seconds == pytest.approx(2 * fast.budget_seconds)


def test_time_budget_is_scaled_by_the_device_factor():
    from orchestrator import budget
    speeds = budget.kind_speeds([{"device_name": "a", "speed": 10.0}, {"device_name": "a", "speed": 12.0},
                                 {"device_name": "b", "speed": 5.0}])
    assert speeds == {"a": 11.0, "b": 5.0}
    ref = budget.reference_speed(0.0, [10.0, 12.0, 5.0])
    assert ref == 10.0 and budget.budget_factor(ref, speeds["b"]) == 2.0
    assert budget.reference_speed(20.0, [1.0]) == 20.0
    assert budget.startup_allowance([], 300.0) == 300.0
    assert budget.startup_allowance([12.0, 15.0], 300.0) == 30.0


def test_candidate_finishing_before_the_seed_runs_waits_for_their_score(driver):
    driver.seed_baseline()
    seeds = [driver.ready.popleft() for _ in range(3)]
    job = candidate(driver, MATRIX_LR=0.03)
    driver.ready.remove(job)
    driver.in_flight = {f"r{i}": (seed_job, 0) for i, seed_job in enumerate(seeds)}   # seed runs still running
    driver.on_result(job, result(1.75), SLOTS[0])
    assert job.trial_id not in {r["trial_id"] for r in driver.archive.trial_records()}   # not judged yet
    waiting = driver.cfg.stop.max_trials - len(driver.in_flight) - len(driver.ready) - driver.finished - 1
    assert driver.before_baseline and driver.budget_left() == waiting       # the waiting job counts
    for i, (seed_job, value) in enumerate(zip(seeds, (2.00, 2.02, 2.01))):
        del driver.in_flight[f"r{i}"]
        driver.on_result(seed_job, result(value), SLOTS[0])
    row = rows(driver).loc[job.trial_id]                          # decided once the seed's runs are in
    assert row.verdict == "promote" and row.slot == "a0"


def test_cull_retires_a_stale_member_forks_a_top_one_and_stops_its_queued_work(driver):
    driver.cfg.selection.cull_every, driver.cfg.selection.patience = 4, 1
    driver.cfg.selection.head_runs = 1                   # a promoted head is judged on its posterior's weight
    seed(driver)
    candidate(driver, "m0", MATRIX_LR=0.03)
    feed(driver, 1.80)                                                           # m0 improves
    for lr in (0.01, 0.015):
        candidate(driver, "m1", MATRIX_LR=lr)
        feed(driver, 2.40)                                                       # m1 stalls twice
    queued = candidate(driver, "m1", EMBED_LR=0.1)        # still in the queue when the cull comes
    last = candidate(driver, "m0", EMBED_LR=0.3)
    driver.ready.remove(last)
    driver.on_result(last, result(2.5), SLOTS[0])         # parks: m0's new head weighs less than one run
    ref = driver.ready.popleft()
    assert ref.proposer == REFERENCE
    driver.on_result(ref, result(1.85), SLOTS[0])          # decided: the 4th candidate to finish, a cull
    assert "m1" in driver.archive.retired() and "m1" not in driver.archive.heads()
    (fork,) = [e for e in driver.archive.lineage() if e.forked_from]
    assert fork.forked_from == "m0" and driver.archive.heads()[fork.member] == driver.archive.heads()["m0"]
    row = rows(driver).loc[queued.trial_id]
    assert row.status == "stopped" and "retired" in row.reason and queued not in driver.ready


def test_cpu_slots_keep_a_spare_core_and_auto_overlap_follows_it():
    from orchestrator.budget import cpu_slots, overlap_on
    assert cpu_slots(0, cores=2, threads=1) == (1, True)       # the demo on 2 cores: one slot, one spare core
    assert cpu_slots(0, cores=16, threads=2) == (4, True)
    assert cpu_slots(0, cores=1, threads=1) == (1, False)      # one core: no room to overlap
    assert cpu_slots(2, cores=2, threads=1) == (2, False)      # slots asked for by the config use every core
    assert overlap_on("auto", {"device": "cpu", "spare_core": True})
    assert not overlap_on("auto", {"device": "cpu", "spare_core": False})
    assert overlap_on("auto", {"device": "cuda"}) and overlap_on("on", {"device": "cpu"})
    assert not overlap_on("off", {"device": "cuda", "spare_core": True})


def test_trial_spec_scopes_the_compile_cache_to_the_member(driver):
    from orchestrator import budget
    job = candidate(driver, member="m1", MATRIX_LR=0.03)
    spec = budget.trial_spec(driver.cfg, job, SLOTS[0], "/data", 1, 60.0)
    assert spec.compile_scope == "m1"
    driver.cfg.resources.compile_cache = "node"
    assert budget.trial_spec(driver.cfg, job, SLOTS[0], "/data", 1, 60.0).compile_scope == ""


def test_head_gets_more_runs_before_a_rerun_is_decided(driver):
    driver.cfg.selection.rerun_head_runs = 4
    seed(driver)
    job = candidate(driver, MATRIX_LR=0.03)
    feed(driver, 1.98)                                  # between the bars: a second run
    assert driver.ready[0] is job
    feed(driver, 1.97)                                  # the head has 3 runs here, 4 wanted before deciding
    ref = driver.ready[0]
    assert ref.proposer == REFERENCE and ref.want_runs == 1 and job.trial_id not in rows(driver).index
    feed(driver, 2.01)
    row = rows(driver).loc[job.trial_id]
    assert row.runs == 2 and row.head_runs == 4 and row.verdict in ("promote", "discard")
    assert rows(driver).loc[ref.trial_id].verdict == "reference"


def test_a_head_rerun_on_the_same_device_trains_and_is_not_reused(driver):
    driver.cfg.selection.head_runs = 4
    seed(driver)
    job = candidate(driver, MATRIX_LR=0.03)
    feed(driver, 1.75)                                  # the head has 3 runs on cpu-a, 4 wanted
    ref = driver.ready[0]
    assert ref.proposer == REFERENCE and ref.device_kind == "cpu-a"
    assert not driver.try_reuse(ref, SLOTS[0])          # byte-identical to the seed, yet it must train
    feed(driver, 2.03)
    assert rows(driver).loc[ref.trial_id].verdict == "reference"
    assert rows(driver).loc[job.trial_id].head_runs == 4          # judged against the head's 4 runs
