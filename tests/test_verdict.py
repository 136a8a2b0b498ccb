"""The verdict rule on synthetic numbers: pooled noise and its widening, the SPRT, rerun / confirm / promote / discard,
a measured null promotion rate, seed-only changes and the same-device comparison."""
from __future__ import annotations

import math
import random
import statistics

import pytest

from judge.noise import Noise, inflated, noise_by_key, pooled, t_quantile
from judge.verdict import Rule, compare_on_device, decide, is_seed_only_change, log_lr, sprt_margin
from orchestrator.config import SelectionConfig

HEAD = [1.250, 1.252, 1.248, 1.251, 1.249, 1.250]
UNIT = Rule(effect_sigmas=1.0, alpha=0.3, beta=0.5, max_runs=3, confirm_runs=2, confirm_bar=1.0)
SIGMA = Noise(0.002, 30, 5)
DEFAULTS = SelectionConfig()
RULE = Rule(**{k: getattr(DEFAULTS, k) for k in Rule.__dataclass_fields__})      # the config defaults


def test_noise_is_pooled_over_every_source_run_twice_with_its_dof():
    groups = [[1.000, 1.002, 1.004], [2.0, None, 2.1, float("nan")], [3.0]]
    noise = pooled(groups)
    ss = 2 * 0.002 ** 2 + statistics.variance([2.0, 2.1])
    assert noise.dof == 3 and noise.sources == 2 and noise.sigma == pytest.approx(math.sqrt(ss / 3))
    assert pooled([[1.0], [None, 2.0]]) == Noise()
    table = noise_by_key({("h100", 60.0): [[1.0, 1.1]], ("h100", 300.0): [[1.0]]})
    assert table[("h100", 60.0)].dof == 1 and table[("h100", 300.0)].sigma is None


def test_t_quantile_matches_the_tables_and_tends_to_the_normal():
    assert t_quantile(0.95, 1) == pytest.approx(6.314, abs=1e-3)
    assert t_quantile(0.95, 2) == pytest.approx(2.920, abs=1e-3)
    assert t_quantile(0.95, 5) == pytest.approx(2.015, abs=2e-3)
    assert t_quantile(0.975, 10) == pytest.approx(2.228, abs=2e-3)
    assert t_quantile(0.95, 10 ** 6) == pytest.approx(1.645, abs=1e-3)
    assert t_quantile(0.95, 0) == math.inf


def test_sigma_is_widened_for_few_degrees_of_freedom():
    assert inflated(Noise(0.01, 2, 1)) == pytest.approx(0.01 * 2.920 / 1.645, rel=1e-3)
    assert 0.01 < inflated(Noise(0.01, 30, 4)) < 0.0104
    assert inflated(Noise()) is None


def test_log_likelihood_ratio_and_the_margin_it_implies():
    # gap -1σ, se² = σ²(1 + 1/4): log LR = δ1 (1 - 1/2) / 1.25 = 0.4 for δ1 = 1σ
    assert log_lr([-1.0], [0.0] * 4, 1.0, 1.0) == pytest.approx(0.4)
    assert log_lr([0.0], [0.0] * 4, 1.0, 1.0) == pytest.approx(-0.4)
    margin = sprt_margin(2, 4, 1.0, UNIT)
    assert log_lr([-margin, -margin], [0.0] * 4, 1.0, 1.0) == pytest.approx(UNIT.upper)
    assert UNIT.upper == pytest.approx(math.log(0.5 / 0.3)) and UNIT.lower == pytest.approx(math.log(0.5 / 0.7))


def test_a_clear_gain_clears_the_sprt_then_fresh_runs_confirm_it_at_their_own_score():
    first = decide([1.244], HEAD, SIGMA, UNIT, seed_only=False)
    assert first.kind == "confirm" and first.evidence >= first.bar and first.margin > 0
    still = decide([1.244, 1.246], HEAD, SIGMA, UNIT, False, cleared_at=1)
    assert still.kind == "confirm" and "1/2" in still.decided_by
    done = decide([1.244, 1.246, 1.247], HEAD, SIGMA, UNIT, False, cleared_at=1)
    assert done.kind == "promote" and done.head_score == pytest.approx(1.2465)   # the selecting run left out
    assert done.evidence <= done.bar == -UNIT.confirm_bar


def test_confirmation_that_does_not_reproduce_discards():
    v = decide([1.244, 1.252, 1.251], HEAD, SIGMA, UNIT, False, cleared_at=1)
    assert v.kind == "discard" and "not confirmed" in v.decided_by and v.head_score is None


def test_not_better_is_discarded_at_once_and_a_small_gain_is_rerun_up_to_the_cap():
    assert decide([1.2503], HEAD, SIGMA, UNIT, False).kind == "discard"
    assert decide([1.2485], HEAD, SIGMA, UNIT, False).kind == "rerun"
    spent = decide([1.2485, 1.2484, 1.2486], HEAD, SIGMA, UNIT, False)
    assert spent.kind == "discard" and "after 3/3 runs" in spent.decided_by


def test_sigma_uncertainty_raises_the_bar():
    gain = [1.247]
    assert decide(gain, HEAD, Noise(0.002, 200, 9), UNIT, False).kind == "confirm"
    assert decide(gain, HEAD, Noise(0.002, 2, 1), UNIT, False).kind == "rerun"      # σ x1.78 at 2 dof
    unknown = decide(gain, HEAD, Noise(), UNIT, False)
    assert unknown.kind == "rerun" and "σ unknown" in unknown.decided_by


def test_seed_only_change_is_never_promoted_and_failed_runs_discard():
    v = decide([1.0], HEAD, SIGMA, UNIT, seed_only=True)
    assert v.kind == "discard" and "seed-only" in v.decided_by
    assert decide([1.2, None], HEAD, SIGMA, UNIT, False).kind == "discard"
    assert decide([], HEAD, SIGMA, UNIT, False).kind == "discard"
    assert decide([1.2], [], SIGMA, UNIT, False).kind == "discard"


def _stream(effect: float, n: int, seed: int) -> float:
    """Share of n candidates (true effect `effect` σ) promoted by the default rule against a fresh head every
    10 candidates: head_runs runs, topped up to confirm_head_runs before a confirmation is decided, as the
    driver does; σ pooled, as the driver pools it, over every head so far and every candidate run twice."""
    rng = random.Random(seed)
    promoted, groups = 0, []
    for i in range(n):
        if i % 10 == 0:
            head = [rng.gauss(0, 1) for _ in range(DEFAULTS.head_runs)]
            groups.append(head)
        runs, cleared = [], 0
        while True:
            runs.append(rng.gauss(effect, 1))
            if cleared and len(runs) - cleared >= RULE.confirm_runs:
                head += [rng.gauss(0, 1) for _ in range(DEFAULTS.confirm_head_runs - len(head))]
            v = decide(runs, head, pooled(groups + [runs]), RULE, False, cleared)
            if v.kind == "confirm" and not cleared:
                cleared = len(runs)
            if v.kind not in ("rerun", "confirm"):
                break
        groups.append(runs)
        promoted += v.kind == "promote"
    return promoted / n


def test_measured_null_promotion_rate_stays_under_five_percent():
    rate = _stream(0.0, 2000, seed=1)
    assert rate <= 0.05 + 0.01, rate


def test_measured_power_at_one_sigma_is_at_least_half():
    assert _stream(-1.0, 400, seed=2) >= 0.45


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
