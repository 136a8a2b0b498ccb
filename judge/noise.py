"""The noise of val_bpb: σ pooled over every source measured more than once, with its degrees of freedom.

Pure numbers (no torch, no git): groups of repeated runs in, a pooled σ, its Student-t widening and quantiles out."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

NORMAL = statistics.NormalDist()


@dataclass(frozen=True)
class Noise:
    """σ of one run's val_bpb (None until some source has 2 finite runs), its degrees of freedom, and how
    many sources (train.py versions run more than once) it pools."""
    sigma: float | None = None
    dof: int = 0
    sources: int = 0

    def describe(self) -> str:
        if self.sigma is None:
            return "σ unknown (no source run twice yet)"
        return f"σ {self.sigma:.5f} (dof {self.dof}, {self.sources} source(s))"


def pooled(groups) -> Noise:
    """σ pooled over groups of repeated runs of one source each: sqrt(Σ (n_i - 1) s_i² / Σ (n_i - 1)).
    Failed runs (None, NaN) are left out; a group with fewer than 2 finite runs adds nothing."""
    ss, dof, sources = 0.0, 0, 0
    for group in groups:
        finite = finite_scores(group)
        if len(finite) < 2:
            continue
        mean = statistics.fmean(finite)
        ss += sum((v - mean) ** 2 for v in finite)
        dof += len(finite) - 1
        sources += 1
    if dof == 0:
        return Noise()
    return Noise(math.sqrt(ss / dof), dof, sources)


def noise_by_key(groups: dict) -> dict:
    """{key: Noise} from {key: [runs of one source, ...]} (key: e.g. (device kind, budget seconds))."""
    return {key: pooled(lists) for key, lists in groups.items()}


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom (dof <= 0: infinite, no σ to use).
    Exact for 1 and 2; the Cornish-Fisher series (Abramowitz & Stegun 26.7.5) above, within 1e-3 for p <= 0.999."""
    if not 0 < p < 1:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if dof <= 0:
        return math.inf if p > 0.5 else -math.inf
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NORMAL.inv_cdf(p)
    n = float(dof)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / n + g2 / n ** 2 + g3 / n ** 3 + g4 / n ** 4


def inflated(noise: Noise, z_ref: float = 1.645) -> float | None:
    """σ widened for the uncertainty of σ itself: scaled so that a z of `z_ref` on the normal carries the
    tail of Student t at σ's dof (x1.78 at dof 2, x1.10 at 10, x1.03 at 30); None while σ is unknown."""
    if noise.sigma is None:
        return None
    return noise.sigma * t_quantile(NORMAL.cdf(z_ref), noise.dof) / z_ref


def finite_scores(scores) -> list[float]:
    return [float(s) for s in scores if s is not None and math.isfinite(s)]
