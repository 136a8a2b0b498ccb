"""The prior over edit effects that a population's own verdicts show, and the posterior of one candidate's gap.

Pure numbers (numpy only): effects in σ on a grid; a spike at no effect, a normal slab and a Cauchy tail."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STEP, NEAR = 0.125, 8.0                  # grid spacing (in σ) within ±NEAR σ, where the slab lives
REACH = 64.0                             # beyond it, 1σ apart out to ±REACH σ: a huge gap still has prior mass
GRID = np.concatenate([np.arange(-REACH, -NEAR), np.arange(-NEAR / STEP, NEAR / STEP + 1) * STEP,
                       np.arange(NEAR + 1, REACH + 1)])
WIDTH = np.where(np.abs(GRID) <= NEAR, STEP, 1.0)          # the span of δ each grid point stands for
ZERO = int(np.argmin(np.abs(GRID)))
TAIL, TAIL_SCALE = 0.05, 3.0             # share and scale (σ) of a Cauchy component: big effects are believed
FIT_ROUNDS = 100                          # EM rounds of a fit, always from the default: a fit is a pure function
BIN = 0.1                                # gaps and their standard errors are counted in bins this wide (in σ)


@dataclass(frozen=True)
class Prior:
    """Edit effects δ/σ: `null` of them exactly 0, the rest (less TAIL) normal with `mean` and `sd`
    (positive: worse), TAIL Cauchy around 0 with TAIL_SCALE (fixed); `seen`: verdicts it was fitted to (0: the default)."""
    null: float
    mean: float
    sd: float
    seen: int = 0

    def describe(self) -> str:
        where = f"fitted to {self.seen} verdicts" if self.seen else "the default"
        return f"prior {self.null:.0%} null, slab {self.mean:+.2f}σ ± {self.sd:.2f}σ ({where})"


@dataclass(frozen=True)
class Posterior:
    """What one candidate's gap says about its effect: P(δ < 0), and δ's mean and variance (in σ, σ²)."""
    p_win: float
    mean: float
    var: float


@lru_cache(maxsize=256)
def _parts(null: float, mean: float, sd: float) -> tuple:
    """The three components' masses on the grid: (spike, slab, tail), together summing to 1."""
    spike = np.zeros(len(GRID))
    spike[ZERO] = null
    slab = np.exp(-0.5 * ((GRID - mean) / sd) ** 2) * WIDTH
    slab[ZERO] = 0.0
    slab *= (1.0 - null - TAIL) / slab.sum()
    tail = WIDTH / (1.0 + (GRID / TAIL_SCALE) ** 2)
    tail *= TAIL / tail.sum()
    return spike, slab, tail


def masses(prior: Prior) -> np.ndarray:
    spike, slab, tail = _parts(prior.null, prior.mean, prior.sd)
    return spike + slab + tail


def posterior(prior: Prior, gap: float, se: float, dof: float = math.inf) -> Posterior:
    """The posterior of δ/σ given a candidate's gap (its mean minus the head's, in σ) and that gap's standard
    error (in σ: sqrt(1/n_cand + 1/n_head) for runs of one σ); σ estimated with `dof` degrees of freedom makes
    the gap's likelihood a Student t (normal when σ is known)."""
    standard = (gap - GRID) / se
    if math.isinf(dof):
        log_likelihood = -0.5 * standard ** 2
    else:
        log_likelihood = -0.5 * (dof + 1) * np.log1p(standard ** 2 / dof)
    log_w = np.log(masses(prior) + 1e-300) + log_likelihood
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = float(w @ GRID)
    return Posterior(float(w[GRID < 0].sum()), mean, max(float(w @ GRID ** 2) - mean * mean, 0.0))


def bin_of(gap: float, se: float) -> tuple[float, float]:
    """The bin a verdict's (gap, se) is counted in (gaps beyond the grid are clipped to it)."""
    clipped = min(max(gap, -REACH), REACH)
    return round(round(clipped / BIN) * BIN, 6), round(max(round(se / BIN) * BIN, BIN), 6)


def fit(bins: dict, default: Prior, weight: float) -> Prior:
    """The prior that the counted verdicts show ({(gap, se) bin: count}), by EM from `default`, which counts
    as `weight` verdicts of its own: with few verdicts the default holds, with many the population's history."""
    seen = int(sum(bins.values()))
    if seen == 0:
        return default
    keys = sorted(bins)
    gaps = np.array([k[0] for k in keys])[:, None]
    ses = np.array([k[1] for k in keys])[:, None]
    counts = np.array([bins[k] for k in keys], dtype=float)[:, None]
    likelihood = np.exp(-0.5 * ((gaps - GRID) / ses) ** 2) / ses
    prior = default
    d_spike, d_slab, _ = _parts(default.null, default.mean, default.sd)
    d_slab_mass = d_slab.sum()
    for _ in range(FIT_ROUNDS):
        spike, slab, tail = _parts(prior.null, prior.mean, prior.sd)
        total = likelihood @ (spike + slab + tail)[:, None]
        share = counts / np.maximum(total, 1e-300)
        r_spike = float((share * likelihood[:, ZERO:ZERO + 1]).sum()) * spike[ZERO]
        r_slab = (share * likelihood).sum(axis=0) * slab
        n_slab = float(r_slab.sum())
        n_spike = r_spike + weight * d_spike[ZERO]
        n_slab_all = n_slab + weight * d_slab_mass
        mean = (float(r_slab @ GRID) + weight * d_slab_mass * default.mean) / n_slab_all
        second = (float(r_slab @ GRID ** 2) + weight * d_slab_mass * (default.sd ** 2 + default.mean ** 2))
        sd = math.sqrt(max(second / n_slab_all - mean * mean, STEP ** 2))
        null = (1.0 - TAIL) * n_spike / (n_spike + n_slab_all)
        prior = Prior(round(float(null), 4), round(float(mean), 4), round(float(sd), 4), seen)
    return prior
