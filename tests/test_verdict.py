"""The verdict rule on synthetic numbers: pooled noise, the effect prior and its fit, rerun / promote /
discard, a promoted head's posterior, measured null promotion rate, power and head bias, seed-only changes."""
from __future__ import annotations

import math
import random
import statistics

import pytest

from judge.effect_prior import GRID, Prior, bin_of, fit, masses, posterior
from judge.noise import Noise, noise_by_key, pooled
from judge.verdict import HeadEstimate, Rule, decide, is_seed_only_change, promote_margin
from orchestrator.config import SelectionConfig
from orchestrator.population import Scores, rule_of, score_row

HEAD = HeadEstimate(1.250, 6)
SIGMA = Noise(0.002, 30, 5)
DEFAULTS = SelectionConfig()
RULE = rule_of(DEFAULTS)                  # the config defaults
UNIT = Rule(promote_at=0.5, discard_at=0.2, max_runs=3, default=Prior(0.5, 0.3, 1.0), prior_weight=20)


def test_noise_is_pooled_over_every_source_run_twice_with_its_dof():
    groups = [[1.000, 1.002, 1.004], [2.0, None, 2.1, float("nan")], [3.0]]
    noise = pooled(groups)
    ss = 2 * 0.002 ** 2 + statistics.variance([2.0, 2.1])
    assert noise.dof == 3 and noise.sources == 2 and noise.sigma == pytest.approx(math.sqrt(ss / 3))
    assert pooled([[1.0], [None, 2.0]]) == Noise()
    table = noise_by_key({("h100", 60.0): [[1.0, 1.1]], ("h100", 300.0): [[1.0]]})
    assert table[("h100", 60.0)].dof == 1 and table[("h100", 300.0)].sigma is None


def test_the_fitted_prior_is_the_default_without_verdicts_and_finds_a_known_mix_with_many():
    default = Prior(0.5, 0.3, 1.0)
    assert fit({}, default, 20) == default
    rng, bins = random.Random(3), {}
    for _ in range(4000):                      # 70 % no effect, the rest N(-0.5, 0.8²) in σ, each seen ± 0.5σ
        effect = 0.0 if rng.random() < 0.7 else rng.gauss(-0.5, 0.8)
        at = bin_of(effect + rng.gauss(0, 0.5), 0.5)
        bins[at] = bins.get(at, 0) + 1
    found = fit(bins, default, 20)
    assert found.seen == 4000 and abs(found.null - 0.7) < 0.08
    assert abs(found.mean + 0.5) < 0.25 and abs(found.sd - 0.8) < 0.25


def test_the_posterior_follows_the_gap_and_believes_a_huge_one():
    prior = Prior(0.5, 0.3, 1.0)
    wins = [posterior(prior, gap, 1.0).p_win for gap in (2.0, 0.0, -1.0, -2.0, -4.0)]
    assert wins == sorted(wins) and wins[0] < 0.1 < wins[-1] and wins[-1] > 0.9
    huge = posterior(prior, -12.0, 1.0)
    assert huge.mean == pytest.approx(-12.0, abs=0.5)            # the flat tail: a 12σ win is not shrunk to 2σ
    small = posterior(prior, -1.5, 1.0)
    assert -1.5 < small.mean < 0                                  # a small lucky gap is shrunk toward 0


def test_the_margin_is_where_one_run_reaches_the_bar():
    margin = promote_margin(1, HEAD.weight, Noise(0.002, 10 ** 6, 5), UNIT, UNIT.default)
    at = decide([HEAD.mean - margin * 1.001], HEAD, Noise(0.002, 10 ** 6, 5), UNIT, False)
    below = decide([HEAD.mean - margin * 0.97], HEAD, Noise(0.002, 10 ** 6, 5), UNIT, False)
    assert margin > 0 and at.kind == "promote" and below.kind != "promote"


def test_a_clear_gain_is_promoted_at_a_posterior_score_between_its_runs_and_the_head():
    v = decide([1.244], HEAD, SIGMA, UNIT, seed_only=False)
    assert v.kind == "promote" and v.evidence >= v.bar and v.margin > 0 and v.gap < 0 < v.gap_se
    assert 1.244 < v.head_score < 1.250 and v.head_weight > 0      # shrunk: the luck that selected it left out


def test_not_better_is_discarded_at_once_and_a_small_gain_is_rerun_up_to_the_cap():
    assert decide([1.2503], HEAD, SIGMA, UNIT, False).kind == "discard"
    assert decide([1.2485], HEAD, SIGMA, UNIT, False).kind == "rerun"
    spent = decide([1.2485, 1.2486, 1.2489], HEAD, SIGMA, UNIT, False)
    assert spent.kind == "discard" and "after 3/3 runs" in spent.decided_by


def test_sigma_uncertainty_raises_the_bar():
    gain = [1.245]
    assert decide(gain, HEAD, Noise(0.002, 200, 9), UNIT, False).kind == "promote"
    assert decide(gain, HEAD, Noise(0.002, 2, 1), UNIT, False).kind == "rerun"      # a Student t at 2 dof
    unknown = decide(gain, HEAD, Noise(), UNIT, False)
    assert unknown.kind == "rerun" and "σ unknown" in unknown.decided_by


def test_seed_only_change_is_never_promoted_and_failed_runs_discard():
    v = decide([1.0], HEAD, SIGMA, UNIT, seed_only=True)
    assert v.kind == "discard" and "seed-only" in v.decided_by
    assert decide([1.2, None], HEAD, SIGMA, UNIT, False).kind == "discard"
    assert decide([], HEAD, SIGMA, UNIT, False).kind == "discard"
    assert decide([1.2], None, SIGMA, UNIT, False).kind == "discard"


def _stream(effect_of, n: int, seed: int, rule=RULE, learn: bool = False) -> tuple[float, list]:
    """n candidates (true effects from effect_of(rng), in σ) against a fresh head every 10 candidates, with the
    default rule: head_runs runs, topped up to rerun_head_runs before a second run is decided, as the driver
    does; σ pooled over every head and every candidate run twice; the prior the rule's default (learn False:
    the worst case for nulls) or fitted to the stream's own verdicts so far, as the population fits it.
    Returns the share promoted and (head estimate - true value) of each promotion."""
    rng = random.Random(seed)
    promoted, groups, bias, bins = 0, [], [], {}
    for i in range(n):
        if i % 10 == 0:
            head_true, head = 0.0, [rng.gauss(0, 1) for _ in range(DEFAULTS.head_runs)]
            groups.append(head)
            estimate = HeadEstimate(statistics.fmean(head), len(head))
        effect, runs = effect_of(rng), []
        while True:
            runs.append(rng.gauss(head_true + effect, 1))
            if len(runs) == 2 and estimate.weight < DEFAULTS.rerun_head_runs:
                head += [rng.gauss(head_true, 1) for _ in range(DEFAULTS.rerun_head_runs - len(head))]
                estimate = HeadEstimate(statistics.fmean(head), len(head))
            prior = fit(bins, rule.default, rule.prior_weight) if learn else rule.default
            v = decide(runs, estimate, pooled(groups + [runs]), rule, False, prior)
            if v.kind != "rerun":
                break
        groups.append(runs)
        at = bin_of(v.gap, v.gap_se)
        bins[at] = bins.get(at, 0) + 1
        if v.kind == "promote":
            promoted += 1
            bias.append(v.head_score - (head_true + effect))
            head_true, head, estimate = head_true + effect, [], HeadEstimate(v.head_score, v.head_weight)
            groups.append(head)
    return promoted / n, bias


def test_measured_null_promotion_rate_is_about_five_percent_at_the_default_prior():
    """The worst case: every head fresh, nothing learned (bench/verdict_sim.py measures the rest; the goal is
    5 %, met here within the ±0.5 % sampling error of 2,000 draws)."""
    rate, _ = _stream(lambda rng: 0.0, 2000, seed=1)
    assert rate <= 0.06, rate


def test_measured_power_at_one_sigma_is_a_third_at_the_default_prior_and_half_once_learned():
    """Every edit a 1σ win: at the default prior (which expects most edits to do nothing) about a third are
    promoted; once the prior is fitted to the stream's own verdicts, which show the wins, at least half."""
    assert _stream(lambda rng: -1.0, 400, seed=2)[0] >= 0.3
    assert _stream(lambda rng: -1.0, 400, seed=2, learn=True)[0] >= 0.5


def test_a_promoted_head_carries_no_selection_bias_when_the_prior_is_right():
    """Effects drawn from the rule's own prior: the posterior score of a promotion is unbiased, where the mean of
    the runs that selected it would be lucky by about half a σ."""
    rule = Rule(promote_at=DEFAULTS.promote_at, discard_at=DEFAULTS.discard_at,
                          max_runs=DEFAULTS.max_runs, default=Prior(0.5, 0.3, 1.0), prior_weight=20)
    weights = masses(rule.default).tolist()
    draw = lambda rng: rng.choices(GRID.tolist(), weights)[0]        # noqa: E731  (spike, slab and tail)
    _, bias = _stream(draw, 2000, seed=4, rule=rule)
    assert len(bias) > 100 and abs(statistics.fmean(bias)) < 0.15, statistics.fmean(bias)


def test_recorded_verdicts_feed_the_population_prior_and_a_promotion_is_scored_by_its_posterior():
    scores = Scores()
    for i in range(30):
        score_row(scores, f"h{i}", "cpu", {"trial_id": f"t{i}", "status": "ok", "verdict": "discard",
                                          "run_scores": "[1.0]", "effect": -2.0 if i % 3 else 0.0, "effect_se": 1.0})
    prior = scores.prior(RULE)
    assert prior.seen == 30 and prior.mean < RULE.default.mean           # the history shows wins: the slab moves
    score_row(scores, "hp", "cpu", {"trial_id": "t99", "status": "ok", "verdict": "promote", "run_scores": "[0.9, 0.8]",
                                    "selection_runs": 2, "head_score": 0.87, "head_weight": 1.5})
    assert scores.runs("hp", "cpu") == [] and scores.estimate("hp", "cpu") == HeadEstimate(0.87, 1.5)
    score_row(scores, "hp", "cpu", {"trial_id": "r1", "status": "ok", "verdict": "reference", "run_scores": "[0.92]"})
    assert scores.estimate("hp", "cpu") == HeadEstimate(pytest.approx((0.87 * 1.5 + 0.92) / 2.5), 2.5)


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
