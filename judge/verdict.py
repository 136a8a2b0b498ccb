"""Keep or discard: the sequential rule (rerun / confirm / promote / discard) and seed-only changes.

Pure functions on numbers and source text (lower val_bpb is better); the driver records the evidence."""
from __future__ import annotations

import ast
import math
import statistics
from dataclasses import dataclass

from judge.noise import Noise, finite_scores, inflated
from judge.source_tree import parsed

KINDS = ("promote", "discard", "rerun", "confirm")
SEED_MARK = "SEED"                  # assignments to names containing this (any case) only choose randomness
# Nodes that could hide an effect inside a "seed" assignment: such an assignment counts as a real change.
EFFECT_NODES = (ast.Call, ast.NamedExpr, ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom,
                ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass(frozen=True)
class Rule:
    """The sequential rule's knobs (selection.* in the config; defaults in orchestrator/config.py
    SelectionConfig, chosen by bench/verdict_sim.py).

    Selection: a Wald SPRT after each run between H0 (δ = 0) and H1 (δ = -effect_sigmas·σ) on the gap
    d = mean(candidate) - mean(head), whose variance σ²(1/n_cand + 1/n_head) carries the head's own
    uncertainty (σ widened for its few dof, judge.noise.inflated). Accept H1 (log LR >= log((1-β)/α)):
    the candidate goes on to `confirm_runs` fresh runs; accept H0 (log LR <= log(β/(1-α))) or reach
    `max_runs`: discard. Confirmation: promote when every run of the candidate, against the head's runs,
    gives z <= -confirm_bar; the confirmation runs alone become the new head's first runs."""
    effect_sigmas: float         # δ1 of H1, in σ
    alpha: float                 # the SPRT's nominal false-clear rate
    beta: float                  # the SPRT's nominal miss rate at δ1
    max_runs: int                # selection runs at most; then discard
    confirm_runs: int            # fresh runs of a cleared candidate; they alone score the new head
    confirm_bar: float           # promote when all the candidate's runs give z <= -confirm_bar

    @property
    def upper(self) -> float:
        return math.log((1 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        return math.log(self.beta / (1 - self.alpha))

    def describe(self) -> str:
        return (f"SPRT δ1 {self.effect_sigmas:g}σ α {self.alpha:g} β {self.beta:g}, {self.max_runs} runs, "
                f"confirm {self.confirm_runs} at z {self.confirm_bar:g}")


@dataclass(frozen=True)
class Verdict:
    """kind: promote | discard | rerun | confirm (run again to confirm); the runs it rests on, the evidence
    (log LR in selection, z at confirmation), the bar it was read against and the gap in val_bpb that bar
    asks for (margin), and why, in one line. head_score: the confirmed score of a promotion."""
    kind: str
    runs: int
    decided_by: str
    mean: float | None = None
    evidence: float | None = None
    bar: float | None = None
    head_score: float | None = None
    margin: float | None = None


def gap_se(n_cand: int, n_head: int, sigma: float) -> float:
    """Standard error of mean(candidate) - mean(head)."""
    return sigma * math.sqrt(1 / n_cand + 1 / n_head)


def evidence(cand: list[float], head: list[float], sigma: float) -> float:
    """z of the candidate's mean against the head's mean, in standard errors of the difference."""
    se = gap_se(len(cand), len(head), sigma)
    diff = statistics.fmean(cand) - statistics.fmean(head)
    if se <= 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / se


def log_lr(cand: list[float], head: list[float], sigma: float, effect_sigmas: float) -> float:
    """log of P(gap | δ = -δ1) / P(gap | δ = 0) for a normal gap with the standard error of gap_se."""
    se = gap_se(len(cand), len(head), sigma)
    if se <= 0:
        return 0.0
    d1 = effect_sigmas * sigma
    return -d1 * (statistics.fmean(cand) - statistics.fmean(head) + d1 / 2) / se ** 2


def sprt_margin(n_cand: int, n_head: int, sigma: float, rule: Rule) -> float:
    """How far below the head the candidate's mean must be for the log LR to reach rule.upper."""
    d1 = rule.effect_sigmas * sigma
    return d1 / 2 + rule.upper * gap_se(n_cand, n_head, sigma) ** 2 / d1


def decide(cand_runs: list[float], head_runs: list[float], noise: Noise, rule: Rule, seed_only: bool,
           cleared_at: int = 0) -> Verdict:
    """After each run of a candidate: rerun, confirm, promote or discard (see Rule). cleared_at: how many
    selection runs the candidate had when the SPRT accepted H1 (0: not yet); runs after those confirm it.
    A seed-only change is never promoted; failed runs discard."""
    runs = len(cand_runs)
    if seed_only:
        return Verdict("discard", runs, "seed-only change (differs from its parent only in *SEED* "
                                        "assignments): never promoted")
    finite, head = _finite(cand_runs), _finite(head_runs)
    if runs == 0 or len(finite) != runs:
        return Verdict("discard", runs, f"{runs - len(finite)} of {runs} run(s) gave no finite val_bpb")
    if not head:
        return Verdict("discard", runs, "no score for the head to compare with")
    if cleared_at:
        return _confirmation(finite, head, noise, rule, cleared_at)
    mean = statistics.fmean(finite)
    said = f"mean of {_runs(runs)} {mean:.6f} vs head {statistics.fmean(head):.6f} ({_runs(len(head))})"
    sigma = inflated(noise)
    if sigma is None or sigma <= 0:
        kind = "rerun" if runs < rule.max_runs else "discard"
        return Verdict(kind, runs, f"{said}: {noise.describe()}, no evidence ({runs}/{rule.max_runs} runs)", mean)
    llr = log_lr(finite, head, sigma, rule.effect_sigmas)
    margin = sprt_margin(runs, len(head), sigma, rule)
    said += f": log LR {llr:.2f}, {noise.describe()}"
    if llr >= rule.upper:
        if rule.confirm_runs == 0:
            return Verdict("promote", runs, f"{said} >= {rule.upper:.2f}: promoted", mean, llr, rule.upper,
                           mean, margin)
        return Verdict("confirm", runs, f"{said} >= {rule.upper:.2f}: cleared, {rule.confirm_runs} fresh "
                                        f"run(s) confirm it", mean, llr, rule.upper, None, margin)
    if llr <= rule.lower:
        return Verdict("discard", runs, f"{said} <= {rule.lower:.2f}: not better", mean, llr, rule.upper,
                       None, margin)
    if runs >= rule.max_runs:
        return Verdict("discard", runs, f"{said} short of {rule.upper:.2f} after {runs}/{rule.max_runs} runs",
                       mean, llr, rule.upper, None, margin)
    return Verdict("rerun", runs, f"{said} between {rule.lower:.2f} and {rule.upper:.2f}: re-run with a new "
                                  f"seed ({runs}/{rule.max_runs} runs)", mean, llr, rule.upper, None, margin)


def _confirmation(finite: list[float], head: list[float], noise: Noise, rule: Rule, cleared_at: int) -> Verdict:
    """The fresh runs after the SPRT cleared the candidate: with the selection runs they decide (z on all
    runs); they alone are the new head's score."""
    fresh = finite[cleared_at:]
    runs = len(finite)
    if len(fresh) < rule.confirm_runs:
        return Verdict("confirm", runs, f"confirmation run {len(fresh)}/{rule.confirm_runs}",
                       statistics.fmean(finite))
    score = statistics.fmean(fresh)
    said = (f"cleared after {_runs(cleared_at)}; {_runs(len(fresh))} confirming {score:.6f}, all "
            f"{statistics.fmean(finite):.6f} vs head {statistics.fmean(head):.6f} ({_runs(len(head))})")
    sigma = inflated(noise)
    if sigma is None or sigma <= 0:
        return Verdict("discard", runs, f"{said}: {noise.describe()}", score)
    z = evidence(finite, head, sigma)
    margin = rule.confirm_bar * gap_se(runs, len(head), sigma)
    said += f": z {z:.2f}, {noise.describe()}"
    if z <= -rule.confirm_bar:
        return Verdict("promote", runs, f"{said} <= {-rule.confirm_bar:.2f}: promoted at the confirmation "
                                        f"runs' score", score, z, -rule.confirm_bar, score, margin)
    return Verdict("discard", runs, f"{said} > {-rule.confirm_bar:.2f}: not confirmed", score, z,
                   -rule.confirm_bar, None, margin)


def compare_on_device(head_scores: dict[str, list[float] | float], device_kind: str) -> float | None:
    """The head's score to compare a candidate against on the candidate's device kind (the mean of the head's
    finite runs there), or None when the head has no score on that kind and must be re-run there first."""
    scores = head_scores.get(device_kind)
    if scores is None:
        return None
    finite = _finite([scores] if isinstance(scores, (int, float)) else scores)
    return statistics.fmean(finite) if finite else None


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
