"""The noise of val_bpb: σ pooled over every source measured more than once, with its degrees of freedom.

Pure numbers (no torch, no git): groups of repeated runs in, a pooled σ and its degrees of freedom out."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass



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


def finite_scores(scores) -> list[float]:
    return [float(s) for s in scores if s is not None and math.isfinite(s)]
