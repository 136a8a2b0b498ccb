"""Keep or discard: the noise floor of val_bpb per device kind and the promote / rerun / discard rule.

Pure functions on numbers and source text (lower val_bpb is better); the driver records margin, runs, decided_by."""
from __future__ import annotations

import ast
import math
import statistics
from dataclasses import dataclass

KINDS = ("promote", "discard", "rerun")
SEED_MARK = "SEED"                  # assignments to names containing this (any case) only choose randomness
# Nodes that could hide an effect inside a "seed" assignment: such an assignment counts as a real change.
EFFECT_NODES = (ast.Call, ast.NamedExpr, ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom,
                ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass(frozen=True)
class Verdict:
    """kind: promote | discard | rerun; the margin used, how many runs it rests on, and why, in one line."""
    kind: str
    margin: float
    runs: int
    decided_by: str
    mean: float | None = None


def noise_floor(scores_by_device: dict[str, list[float]]) -> dict[str, float]:
    """Sample standard deviation of val_bpb per device kind, from repeated runs of the same train.py
    with different seeds. Failed runs (None, NaN) are left out; each kind needs 2 finite scores."""
    floors = {}
    for kind, scores in scores_by_device.items():
        finite = _finite(scores)
        if len(finite) < 2:
            raise ValueError(f"noise_floor: device kind {kind!r} has {len(finite)} finite score(s) "
                             f"of {len(scores)}; at least 2 are needed for a standard deviation")
        floors[kind] = statistics.stdev(finite)
    return floors


def margin_for(std: float | None, multiple: float, fixed: float) -> float:
    """The promotion margin: max(multiple * std, fixed). multiple = 0 gives the fixed value alone, fixed = 0
    the multiple of the noise alone. std None (no noise floor measured for this device kind) needs fixed > 0."""
    if multiple < 0 or fixed < 0:
        raise ValueError(f"margin_for: multiple ({multiple}) and fixed ({fixed}) must be >= 0")
    if std is None or not math.isfinite(std):
        if fixed <= 0:
            raise ValueError("margin_for: no noise floor for this device kind and no fixed margin; "
                             "measure the noise floor or set a fixed margin")
        return float(fixed)
    if std < 0:
        raise ValueError(f"margin_for: std must be >= 0, got {std}")
    return max(multiple * std, float(fixed))


def decide(candidate_scores: list[float], head_score: float, margin: float, max_runs: int,
           seed_only: bool) -> Verdict:
    """promote if mean(candidate) < head - margin; rerun (with a new seed) if better than head but inside the
    margin and fewer than max_runs runs so far; discard otherwise. A seed-only change is never promoted."""
    if not math.isfinite(head_score):
        raise ValueError(f"decide: head score must be finite, got {head_score}")
    if margin < 0 or max_runs < 1:
        raise ValueError(f"decide: margin ({margin}) must be >= 0 and max_runs ({max_runs}) >= 1")
    runs = len(candidate_scores)
    if seed_only:
        return Verdict("discard", margin, runs, "seed-only change (differs from its parent only in *SEED* "
                                                "assignments): never promoted")
    finite = _finite(candidate_scores)
    if runs == 0 or len(finite) != runs:
        return Verdict("discard", margin, runs, f"{runs - len(finite)} of {runs} run(s) gave no finite val_bpb")
    mean = statistics.fmean(finite)
    said = f"mean of {_runs(runs)} {mean:.6f}"
    if mean < head_score - margin:
        return Verdict("promote", margin, runs, f"{said} < head {head_score:.6f} - margin {margin:.6f}", mean)
    if mean < head_score and runs < max_runs:
        return Verdict("rerun", margin, runs, f"{said} < head {head_score:.6f} but within margin {margin:.6f}: "
                                              f"re-run with a new seed ({runs}/{max_runs} runs)", mean)
    if mean < head_score:
        return Verdict("discard", margin, runs, f"{said} still within margin {margin:.6f} of head "
                                                f"{head_score:.6f} after {runs}/{max_runs} runs", mean)
    return Verdict("discard", margin, runs, f"{said} >= head {head_score:.6f}", mean)


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
        parent, cand = ast.parse(parent_src), ast.parse(cand_src)
    except (SyntaxError, ValueError):
        return False
    return ast.dump(_without_seeds(parent)) == ast.dump(_without_seeds(cand))


class _SeedStripper(ast.NodeTransformer):
    def visit_Assign(self, node):
        return None if _seed_target(node.targets, node.value) else self.generic_visit(node)

    def visit_AnnAssign(self, node):
        return None if _seed_target([node.target], node.value) else self.generic_visit(node)

    def visit_AugAssign(self, node):
        return None if _seed_target([node.target], node.value) else self.generic_visit(node)


def _without_seeds(tree: ast.AST) -> ast.AST:
    tree = _SeedStripper().visit(tree)
    for node in ast.walk(tree):                 # a body left empty by the removal still compares equal
        for field in ("body", "orelse", "finalbody"):
            if getattr(node, field, None) == []:
                setattr(node, field, [ast.Pass()] if field == "body" else [])
    return tree


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
    return [float(s) for s in scores if s is not None and math.isfinite(s)]


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"
