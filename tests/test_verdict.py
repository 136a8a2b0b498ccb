"""The verdict rule on synthetic numbers: noise floor, margin, promote / rerun / discard, seed-only changes,
and the same-device comparison."""
from __future__ import annotations

import math
import statistics

import pytest

from judge.verdict import compare_on_device, decide, is_seed_only_change, margin_for, noise_floor

HEAD = 1.250


def test_noise_floor_is_the_sample_std_per_device_kind_ignoring_failed_runs():
    floors = noise_floor({"h100": [1.000, 1.002, 1.004], "cpu": [2.0, None, 2.1, float("nan")]})
    assert floors["h100"] == pytest.approx(0.002)
    assert floors["cpu"] == pytest.approx(statistics.stdev([2.0, 2.1]))


def test_noise_floor_needs_two_finite_runs_and_names_the_device():
    with pytest.raises(ValueError, match="'a100'"):
        noise_floor({"h100": [1.0, 1.1], "a100": [1.0, None]})


def test_margin_is_a_multiple_of_the_noise_or_a_fixed_value_whichever_is_larger():
    assert margin_for(0.002, 2.0, 0.0) == pytest.approx(0.004)
    assert margin_for(0.002, 0.0, 0.003) == pytest.approx(0.003)
    assert margin_for(0.002, 2.0, 0.001) == pytest.approx(0.004)
    assert margin_for(None, 2.0, 0.005) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="fixed margin"):
        margin_for(None, 2.0, 0.0)
    with pytest.raises(ValueError):
        margin_for(0.002, -1.0, 0.0)


def test_clear_improvement_is_promoted():
    v = decide([1.240], HEAD, margin=0.004, max_runs=3, seed_only=False)
    assert (v.kind, v.runs, v.margin) == ("promote", 1, 0.004)
    assert "mean of 1 run 1.240000 < head 1.250000 - margin 0.004000" == v.decided_by
    assert v.mean == pytest.approx(1.240)


def test_improvement_inside_the_margin_is_rerun_then_decided_by_the_mean():
    first = decide([1.248], HEAD, 0.004, max_runs=3, seed_only=False)
    assert first.kind == "rerun" and "1/3 runs" in first.decided_by
    promoted = decide([1.248, 1.238], HEAD, 0.004, max_runs=3, seed_only=False)      # mean 1.243
    assert promoted.kind == "promote" and promoted.runs == 2 and "mean of 2 runs 1.243000" in promoted.decided_by
    again = decide([1.248, 1.249], HEAD, 0.004, max_runs=3, seed_only=False)
    assert again.kind == "rerun"
    spent = decide([1.248, 1.249, 1.247], HEAD, 0.004, max_runs=3, seed_only=False)
    assert spent.kind == "discard" and "after 3/3 runs" in spent.decided_by


def test_not_better_is_discarded_at_once_and_ties_at_the_edge_are_not_promoted():
    worse = decide([1.260], HEAD, 0.004, max_runs=3, seed_only=False)
    assert worse.kind == "discard" and ">= head" in worse.decided_by
    equal = decide([HEAD], HEAD, 0.004, max_runs=3, seed_only=False)
    assert equal.kind == "discard"
    edge = decide([HEAD - 0.004], HEAD, 0.004, max_runs=1, seed_only=False)
    assert edge.kind == "discard"
    zero = decide([1.2499], HEAD, 0.0, max_runs=1, seed_only=False)
    assert zero.kind == "promote"


def test_seed_only_change_is_never_promoted():
    v = decide([1.0], HEAD, 0.004, max_runs=3, seed_only=True)
    assert v.kind == "discard" and "seed-only" in v.decided_by


def test_failed_runs_discard_and_bad_inputs_raise():
    assert decide([1.2, None], HEAD, 0.004, 3, False).kind == "discard"
    assert decide([], HEAD, 0.004, 3, False).kind == "discard"
    with pytest.raises(ValueError):
        decide([1.2], math.nan, 0.004, 3, False)
    with pytest.raises(ValueError):
        decide([1.2], HEAD, -0.1, 3, False)


def test_compare_on_device_uses_the_head_score_of_the_same_kind_only():
    heads = {"h100": [1.25, 1.27], "cpu": 3.1, "a100": [None]}
    assert compare_on_device(heads, "h100") == pytest.approx(1.26)
    assert compare_on_device(heads, "cpu") == pytest.approx(3.1)
    assert compare_on_device(heads, "h200") is None
    assert compare_on_device(heads, "a100") is None


PARENT = '''
# --- hyperparameters ---
SEED_OFFSET = 0
MATRIX_LR = 0.02
# --- end hyperparameters ---

def main(trial):
    seed = trial.seed + SEED_OFFSET
    return seed * MATRIX_LR
'''


@pytest.mark.parametrize("edit, seed_only", [
    (lambda s: s.replace("SEED_OFFSET = 0", "SEED_OFFSET = 7"), True),
    (lambda s: s.replace("seed = trial.seed + SEED_OFFSET", "seed = trial.seed + SEED_OFFSET + 1"), True),
    (lambda s: s.replace("MATRIX_LR = 0.02", "MATRIX_LR = 0.02  # tuned later"), True),
    (lambda s: s, True),
    (lambda s: s.replace("MATRIX_LR = 0.02", "MATRIX_LR = 0.03"), False),
    (lambda s: s.replace("SEED_OFFSET = 0", "SEED_OFFSET = 1").replace("0.02", "0.03"), False),
    (lambda s: s.replace("SEED_OFFSET = 0", "SEED_OFFSET = setup() or 0"), False),
    (lambda s: s.replace("return seed * MATRIX_LR", "return seed + MATRIX_LR"), False),
    (lambda s: s + "\ndef broken(:\n", False),
])
def test_seed_only_change_detection(edit, seed_only):
    assert is_seed_only_change(PARENT, edit(PARENT)) is seed_only
