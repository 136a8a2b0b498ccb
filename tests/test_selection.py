"""Selection rules on synthetic numbers: results, culling and forks, member and proposer picks.

Pure functions, no Ray and no git; every random choice comes from a seeded random.Random."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from orchestrator import selection
from orchestrator.selection import MemberState


def population(scores: dict, stale: int = 10) -> dict:
    """Members with the given head scores, each `stale` trials past its last improvement."""
    return {name: MemberState(name=name, head_score=score, best_score=score, trials=stale + 1,
                              promotions=1, last_improvement_trial=1)
            for name, score in scores.items()}


def test_apply_result_promotion_advances_head_and_resets_patience():
    states = {"m0": MemberState("m0", head_score=1.5, best_score=1.5)}
    selection.apply_result(states, "m0", 1.6, promoted=False, trial_index=0)
    selection.apply_result(states, "m0", 1.4, promoted=True, trial_index=3)
    s = states["m0"]
    assert (s.head_score, s.best_score, s.trials, s.promotions) == (1.4, 1.4, 2, 1)
    assert s.last_improvement_trial == 2 and s.stale_trials == 0 and s.last_trial_index == 3
    selection.apply_result(states, "m0", None, promoted=False, trial_index=4)   # a crash
    assert states["m0"].head_score == 1.4 and states["m0"].stale_trials == 1


def test_apply_result_discard_keeps_head_but_records_best():
    states = {"m0": MemberState("m0", head_score=1.5, best_score=1.5)}
    selection.apply_result(states, "m0", 1.49, promoted=False, trial_index=0)   # inside the margin
    assert states["m0"].head_score == 1.5 and states["m0"].best_score == 1.49
    with pytest.raises(KeyError, match="nope"):
        selection.apply_result(states, "nope", 1.0, promoted=True, trial_index=1)


def test_due_for_culling_every_k():
    assert [k for k in range(0, 25) if selection.due_for_culling(k, 8)] == [8, 16, 24]
    assert not any(selection.due_for_culling(k, 0) for k in range(20))


def test_cull_keeps_size_forks_from_top_and_never_retires_the_best():
    scores = {f"m{i}": 1.0 + 0.1 * i for i in range(8)}          # m0 best ... m7 worst
    states = population(scores)
    plan = selection.cull_and_fork(states, fraction=0.25, patience=4, rng=random.Random(0))
    assert [r for r, _, _ in plan] == ["m6", "m7"]
    assert all(src in ("m0", "m1") for _, src, _ in plan)
    assert [new for _, _, new in plan] == ["m8", "m9"]
    alive_before = sum(s.alive for s in states.values())
    selection.apply_forks(states, plan, trial_index=40)
    assert sum(s.alive for s in states.values()) == alive_before
    assert not states["m6"].alive and not states["m7"].alive
    child = states["m8"]
    assert child.forked_from in ("m0", "m1") and child.head_score == states[child.forked_from].head_score
    assert child.trials == 0 and child.stale_trials == 0


def test_cull_respects_patience():
    scores = {f"m{i}": 1.0 + 0.1 * i for i in range(4)}
    states = population(scores, stale=2)
    assert selection.cull_and_fork(states, 0.5, patience=3, rng=random.Random(0)) == []
    states["m3"].trials += 1                                      # m3 now 3 trials without improving
    plan = selection.cull_and_fork(states, 0.5, patience=3, rng=random.Random(0))
    assert [r for r, _, _ in plan] == ["m3"]


def test_cull_never_retires_the_best_even_when_everyone_is_stale():
    states = population({"a": 1.0, "b": 2.0})
    for fraction in (0.5, 0.9):
        plan = selection.cull_and_fork(states, fraction, patience=0, rng=random.Random(1))
        assert [(r, src) for r, src, _ in plan] == [("b", "a")]
    assert selection.cull_and_fork(population({"a": 1.0}), 0.9, 0, random.Random(1)) == []


def test_cull_ignores_unscored_and_dead_members_and_avoids_taken_names():
    states = population({"m0": 1.0, "m1": 1.1, "m2": 1.2, "m3": 1.3})
    states["m4"] = MemberState("m4")                               # not judged yet
    states["m3"].alive = False
    plan = selection.cull_and_fork(states, 0.3, patience=1, rng=random.Random(0), taken={"m5", "m6"})
    assert plan == [("m2", "m0", "m7")]


def test_cull_is_deterministic_for_a_seed():
    scores = {f"m{i}": random.Random(i).uniform(1, 2) for i in range(10)}
    plans = [selection.cull_and_fork(population(scores), 0.3, 2, random.Random(7)) for _ in range(3)]
    assert plans[0] == plans[1] == plans[2] and len(plans[0]) == 3
    other = [selection.cull_and_fork(population(scores), 0.3, 2, random.Random(s)) for s in range(20)]
    assert len({tuple(p) for p in other}) > 1                       # the rng does pick among top members


def test_pick_member_round_robin_prefers_idle_then_least_tried():
    states = {n: MemberState(n, head_score=1.0, trials=t) for n, t in (("m0", 5), ("m1", 2), ("m2", 2))}
    rng = random.Random(0)
    assert selection.pick_member(states, rng, "round_robin", in_flight={"m1": 1}) == "m2"
    assert selection.pick_member(states, rng, "round_robin", in_flight={"m1": 1, "m2": 1}) == "m0"
    picks = Counter(selection.pick_member(states, random.Random(s)) for s in range(40))
    assert set(picks) == {"m1", "m2"}                               # ties broken by the rng
    states["m1"].alive = False
    assert selection.pick_member(states, rng, in_flight={"m2": 1}) == "m0"


def test_pick_member_rank_weights_the_best_most():
    states = {n: MemberState(n, head_score=s) for n, s in (("a", 1.0), ("b", 2.0), ("c", 3.0))}
    states["d"] = MemberState("d")                                  # unscored: lowest weight, still possible
    rng = random.Random(3)
    picks = Counter(selection.pick_member(states, rng, "rank") for _ in range(4000))
    assert picks["a"] > picks["b"] > picks["c"] > picks["d"] > 0
    with pytest.raises(ValueError, match="unknown strategy 'best'"):
        selection.pick_member(states, rng, "best")
    with pytest.raises(ValueError, match="no alive member"):
        selection.pick_member({"x": MemberState("x", alive=False)}, rng)


def test_pick_proposer_by_weight_and_availability():
    weights = {"mutate": 3.0, "agent": 1.0, "inbox": 0.0}
    rng = random.Random(0)
    picks = Counter(selection.pick_proposer(weights, rng) for _ in range(4000))
    assert set(picks) == {"mutate", "agent"} and 2.5 < picks["mutate"] / picks["agent"] < 3.5
    assert selection.pick_proposer(weights, rng, available={"agent", "inbox"}) == "agent"
    assert selection.pick_proposer(weights, rng, available={"inbox"}) is None
    seq = [selection.pick_proposer(weights, random.Random(5)) for _ in range(3)]
    assert len(set(seq)) == 1


def test_new_member_name_never_reuses_a_name():
    assert selection.new_member_name([]) == "m0"
    assert selection.new_member_name(["m0", "m1", "m3"]) == "m4"
    assert selection.new_member_name(["alpha", "m9", "m10x"]) == "m10"
