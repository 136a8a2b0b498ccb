"""Keep or discard: the sequential empirical-Bayes rule (rerun / promote / discard) and seed-only changes.

Pure functions on numbers and source text (lower val_bpb is better); the driver records the evidence."""
from __future__ import annotations

import ast
import math
import statistics
from dataclasses import dataclass

from judge.effect_prior import REACH, Prior, posterior
from judge.noise import Noise, finite_scores
from judge.source_tree import parsed

KINDS = ("promote", "discard", "rerun")
SEED_MARK = "SEED"                  # assignments to names containing this (any case) only choose randomness
# Nodes that could hide an effect inside a "seed" assignment: such an assignment counts as a real change.
EFFECT_NODES = (ast.Call, ast.NamedExpr, ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom,
                ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass(frozen=True)
class Rule:
    """The rule's knobs (selection.* in the config; defaults in orchestrator/config.py SelectionConfig, chosen
    by bench/verdict_sim.py).

    After each run: the gap d = mean(candidate) - head estimate, with standard error σ·sqrt(1/n + 1/w) (w: the
    head's weight in runs; a Student-t likelihood at σ's dof), and the prior over edit effects that the population's
    verdicts show (judge.effect_prior, fitted from `default`, which counts as `prior_weight` verdicts) give
    P(δ < 0). Promote at P >= promote_at; discard at P <= discard_at or after `max_runs`; else run again.
    A promoted head is scored by its posterior mean (corrected for the selection that promoted it) with the
    weight of its posterior variance; its later runs add to that."""
    promote_at: float            # P(the edit is a win) that promotes
    discard_at: float            # P(the edit is a win) at or below which it is discarded
    max_runs: int                # runs of a candidate at most; then discard
    default: Prior               # the prior before the population has verdicts of its own
    prior_weight: float          # verdicts the default counts as

    def describe(self) -> str:
        return (f"P(win) >= {self.promote_at:g} promotes, <= {self.discard_at:g} discards, {self.max_runs} runs; "
                f"prior from verdicts (default {self.default.null:g} null, slab {self.default.mean:+g}σ ± "
                f"{self.default.sd:g}σ, weight {self.prior_weight:g})")


@dataclass(frozen=True)
class HeadEstimate:
    """What the population knows of a head's val_bpb on one device kind: its mean and weight in runs (its own
    runs, plus a promotion's posterior counted as the runs that would carry as much)."""
    mean: float
    weight: float


@dataclass(frozen=True)
class Verdict:
    """kind: promote | discard | rerun; the runs it rests on, the evidence (P(win)) and the bar it was read
    against, the gap in val_bpb one run needs to clear it (margin), the gap and its standard error (in σ), and
    why, in one line. head_score, head_weight: a promotion's posterior score as a head and its weight."""
    kind: str
    runs: int
    decided_by: str
    mean: float | None = None
    evidence: float | None = None
    bar: float | None = None
    head_score: float | None = None
    margin: float | None = None
    head_weight: float | None = None
    gap: float | None = None
    gap_se: float | None = None


def gap_se(n_cand: int, head_weight: float) -> float:
    """Standard error of mean(candidate) - head estimate, in σ."""
    return math.sqrt(1 / n_cand + 1 / head_weight)


def promote_margin(n_cand: int, head_weight: float, noise: Noise, rule: Rule, prior: Prior) -> float:
    """How far below the head (in val_bpb) the candidate's mean must be for P(win) to reach rule.promote_at;
    inf when no gap on the grid reaches it (σ on too few dof for that many runs to promote)."""
    se, low, high = gap_se(n_cand, head_weight), -REACH, REACH      # P(win) falls as the gap grows
    if posterior(prior, low, se, noise.dof).p_win < rule.promote_at:
        return math.inf
    for _ in range(28):                                             # to within 128σ / 2**28
        mid = (low + high) / 2
        if posterior(prior, mid, se, noise.dof).p_win >= rule.promote_at:
            low = mid
        else:
            high = mid
    return -low * noise.sigma


def promoted_head(head: HeadEstimate, cand_mean: float, runs: int, sigma: float, post) -> HeadEstimate:
    """The new head's estimate: the head's and the candidate's runs with the effect's posterior, so the score
    carries no selection bias when the prior is right (its weight: the runs whose mean has its variance)."""
    base = (head.mean * head.weight + cand_mean * runs) / (head.weight + runs)
    shrink = head.weight / (head.weight + runs)
    variance = 1 / (head.weight + runs) + shrink ** 2 * post.var                  # in σ²
    return HeadEstimate(base + shrink * post.mean * sigma, 1 / variance)


def decide(cand_runs: list[float], head: HeadEstimate | None, noise: Noise, rule: Rule, seed_only: bool,
           prior: Prior | None = None) -> Verdict:
    """After each run of a candidate: rerun, promote or discard (see Rule); prior: the fitted prior (the
    rule's default when None). A seed-only change is never promoted; failed runs discard."""
    runs = len(cand_runs)
    if seed_only:
        return Verdict("discard", runs, "seed-only change (differs from its parent only in *SEED* "
                                        "assignments): never promoted")
    finite = _finite(cand_runs)
    if runs == 0 or len(finite) != runs:
        return Verdict("discard", runs, f"{runs - len(finite)} of {runs} run(s) gave no finite val_bpb")
    if head is None or head.weight <= 0:
        return Verdict("discard", runs, "no score for the head to compare with")
    prior = prior or rule.default
    mean = statistics.fmean(finite)
    said = f"mean of {_runs(runs)} {mean:.6f} vs head {head.mean:.6f} (weight {head.weight:.1f} runs)"
    sigma = noise.sigma
    if sigma is None or sigma <= 0:
        kind = "rerun" if runs < rule.max_runs else "discard"
        return Verdict(kind, runs, f"{said}: {noise.describe()}, no evidence ({runs}/{rule.max_runs} runs)", mean)
    gap, se = (mean - head.mean) / sigma, gap_se(runs, head.weight)
    post = posterior(prior, gap, se, noise.dof)           # σ's own uncertainty: a Student t at its dof
    margin = promote_margin(runs, head.weight, noise, rule, prior)
    said += f": gap {gap:+.2f}σ ± {se:.2f}σ, P(win) {post.p_win:.3f}, {noise.describe()}, {prior.describe()}"
    facts = dict(mean=mean, evidence=post.p_win, bar=rule.promote_at, margin=margin, gap=gap, gap_se=se)
    if post.p_win >= rule.promote_at:
        new = promoted_head(head, mean, runs, sigma, post)
        return Verdict("promote", runs, f"{said} >= {rule.promote_at:g}: promoted, scored {new.mean:.6f} "
                                        f"(posterior, weight {new.weight:.1f} runs)", head_score=new.mean,
                       head_weight=new.weight, **facts)
    if post.p_win <= rule.discard_at:
        return Verdict("discard", runs, f"{said} <= {rule.discard_at:g}: not better", **facts)
    if runs >= rule.max_runs:
        return Verdict("discard", runs, f"{said} short of {rule.promote_at:g} after {runs}/{rule.max_runs} runs",
                       **facts)
    return Verdict("rerun", runs, f"{said} between {rule.discard_at:g} and {rule.promote_at:g}: re-run with a "
                                  f"new seed ({runs}/{rule.max_runs} runs)", **facts)


def is_seed_only_change(parent_src: str, cand_src: str) -> bool:
    """True when the two sources have the same AST once assignments to *SEED* names are removed: the candidate
    changes only seeds (or nothing but comments and layout). Seed assignments whose value could have an effect
    (a call, a walrus, a lambda...) are kept in the comparison. False if either source does not parse."""
    try:
        parent, cand = parsed(parent_src), parsed(cand_src)
    except (SyntaxError, ValueError):
        return False
    return _same_without_seeds(parent, cand)


def _same_without_seeds(a, b) -> bool:
    """The two trees (or field values) are equal, positions aside, with seed assignments left out of every
    statement list (a body left empty by that is a `pass`); stops at the first difference."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        if a and isinstance(a[0], ast.stmt) or b and isinstance(b[0], ast.stmt):
            a, b = _kept(a), _kept(b)
        return len(a) == len(b) and all(_same_without_seeds(x, y) for x, y in zip(a, b))
    if not isinstance(a, ast.AST):
        return a == b
    for name in a._fields:
        here, there = getattr(a, name, None), getattr(b, name, None)
        if name == "body" and isinstance(here, list) and isinstance(there, list):
            here, there = _kept(here) or [ast.Pass()], _kept(there) or [ast.Pass()]
        if not _same_without_seeds(here, there):
            return False
    return True


def _kept(statements: list) -> list:
    return [s for s in statements if not _is_seed_assignment(s)]


def _is_seed_assignment(node) -> bool:
    if isinstance(node, ast.Assign):
        return _seed_target(node.targets, node.value)
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return _seed_target([node.target], node.value)
    return False


def _seed_target(targets, value) -> bool:
    names = [_target_name(t) for t in targets]
    if not names or not all(n and SEED_MARK in n.upper() for n in names):
        return False
    return value is None or not any(isinstance(n, EFFECT_NODES) for n in ast.walk(value))


def _target_name(target) -> str | None:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return None


def _finite(scores) -> list[float]:
    return finite_scores(scores)


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"
