"""Synthetic streams of candidates through popsearch's own verdict code, against keep-if-lower and the old rule.

Prints one table: null edits promoted, power at effect/σ, true gain per 100 GPU runs, head bias, runs/candidate."""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from judge.verdict import Rule                                     # noqa: E402
from orchestrator.config import SelectionConfig                     # noqa: E402
from orchestrator.population import (Job, Scores, head_runs_wanted, judge_job, record_runs,  # noqa: E402
                                     reference_runs_needed, rule_of)

SIGMA = 0.0117               # H200, 300-s budget, 3 seeds (issue 9)
DEVICE, BUDGET = "h200", 300.0
SEED_RUNS = 3
MIXES = {                    # name -> [(share, low, high)] of edit effects in val_bpb (negative = a win)
    "issue": [(0.4, 0.0, 0.0), (0.4, 0.002, 0.02), (0.2, -0.02, -0.002)],
    "harder": [(0.5, 0.0, 0.0), (0.4, 0.001, 0.01), (0.1, -0.01, -0.001)],
}


class Lineage:
    """One member: its head's true val_bpb, the rule's view of the head, GPU runs spent, promotions."""
    def __init__(self, rng: random.Random):
        self.rng, self.true, self.runs = rng, 1.0, 0
        self.promotions: list[tuple[float, float, float]] = []   # (true gain, effect, head bias) per promotion

    def run(self, true: float) -> float:
        self.runs += 1
        return self.rng.gauss(true, SIGMA)


def keep_if_lower(lin: Lineage, effects) -> None:
    """The single-GPU loop: one run; kept when lower than the last kept run's score."""
    head = statistics.fmean(lin.run(lin.true) for _ in range(SEED_RUNS))
    for e in effects:
        score = lin.run(lin.true + e)
        if score < head:
            lin.promotions.append((-e, e, score - (lin.true + e)))
            lin.true, head = lin.true + e, score


def shipped(lin: Lineage, effects, fixed: float = 0.0, multiple: float = 2.0, max_runs: int = 2) -> None:
    """The rule as shipped before issue 9, re-implemented here from the old verdict.decide / margin_for:
    margin = fixed, else multiple x std of the seed runs; rerun while better but inside it; head keeps the mean."""
    seeds = [lin.run(lin.true) for _ in range(SEED_RUNS)]
    margin = fixed if fixed > 0 else multiple * statistics.stdev(seeds)
    head = statistics.fmean(seeds)
    for e in effects:
        runs = [lin.run(lin.true + e)]
        while head - margin <= statistics.fmean(runs) < head and len(runs) < max_runs:
            runs.append(lin.run(lin.true + e))
        mean = statistics.fmean(runs)
        if mean < head - margin:
            lin.promotions.append((-e, e, mean - (lin.true + e)))
            lin.true, head = lin.true + e, mean


def sequential(lin: Lineage, effects, sel: SelectionConfig, noise_dof: int = 0) -> None:
    """The new rule through popsearch's own Scores / judge_job / record_runs / head_runs_wanted.
    noise_dof > 0: σ starts from that many dof of another source (runs not counted as this member's)."""
    rule, scores, n = rule_of(sel), Scores(), 0
    if noise_dof:
        other = Job("t99999", "m1", "", "", "OTHER = 1\n", "baseline", "")
        other.runs = [_ok(lin.rng.gauss(1.0, SIGMA)) for _ in range(noise_dof + 1)]
        record_runs(scores, other, DEVICE, promoted=False)
    seed = Job(f"t{n:05d}", "m0", "", "", "SEED = 0\n", "baseline", "")
    seed.runs = [_ok(lin.run(lin.true)) for _ in range(sel.noise_seeds)]
    record_runs(scores, seed, DEVICE, promoted=False)
    head_src = seed.source
    for e in effects:
        n += 1
        job = Job(f"t{n:05d}", "m0", "", "", f"X = {n}\n", "mutate", "")
        head_hash = Job("", "", "", "", head_src, "", "").hash
        while True:
            job.runs.append(_ok(lin.run(lin.true + e)))
            confirming = bool(job.cleared_at) and len(job.runs) - job.cleared_at >= sel.confirm_runs
            top_up(lin, scores, head_src, head_hash, head_runs_wanted(sel, confirming), n)
            v = judge_job(job, scores, head_hash, rule, head_src)
            if v["kind"] == "confirm" and not job.cleared_at:
                job.cleared_at = len(job.runs)
            if v["kind"] not in ("rerun", "confirm"):
                break
        promoted = v["kind"] == "promote"
        record_runs(scores, job, DEVICE, promoted)
        if promoted:
            lin.promotions.append((-e, e, v["head_score"] - (lin.true + e)))
            lin.true, head_src = lin.true + e, job.source


def top_up(lin: Lineage, scores: Scores, head_src: str, head_hash: str, wanted: int, n: int) -> None:
    """The driver's reference runs: the head's runs on the device kind up to `wanted`."""
    short = reference_runs_needed(scores, head_hash, DEVICE, wanted)
    if short:
        ref = Job(f"r{n:05d}", "m0", "", "", head_src, "reference", "")
        ref.runs = [_ok(lin.run(lin.true)) for _ in range(short)]
        record_runs(scores, ref, DEVICE, promoted=False)


def _ok(value: float) -> dict:
    return {"status": "ok", "val_bpb": value, "device": DEVICE, "budget_seconds": BUDGET}


def draw(mix, rng: random.Random) -> float:
    share = rng.random()
    for p, low, high in mix:
        share -= p
        if share < 0:
            return rng.uniform(low, high)
    return 0.0


def stream(rule, effects_of, lineages: int, length: int, seed: int) -> dict:
    """Run `lineages` members of `length` candidates each; pooled figures."""
    rng = random.Random(seed)
    promos, runs, cands = [], 0, 0
    for _ in range(lineages):
        lin = Lineage(rng)
        effects = [effects_of(rng) for _ in range(length)]
        rule(lin, effects)
        promos += lin.promotions
        runs += lin.runs
        cands += length
    return {"promotions": promos, "runs": runs, "candidates": cands}


def figures(rule, fresh_rule, lineages: int, length: int, seed: int) -> dict:
    """In sequence: members of `length` candidates each. Fresh head: members of one candidate each, so every
    candidate meets a newly measured head (no selection of that head by earlier verdicts)."""
    out = {}
    null = stream(rule, lambda r: 0.0, lineages, length, seed)
    out["null promoted (in sequence)"] = f"{len(null['promotions']) / null['candidates']:.1%}"
    fresh = stream(fresh_rule, lambda r: 0.0, lineages * length, 1, seed + 3)
    out["null promoted (fresh head)"] = f"{len(fresh['promotions']) / fresh['candidates']:.1%}"
    for k in (0.25, 0.5, 1.0, 2.0):
        s = stream(rule, lambda r, k=k: -k * SIGMA, lineages, length, seed + 1)
        out[f"power {k:g}σ (in sequence)"] = f"{len(s['promotions']) / s['candidates']:.0%}"
    s = stream(fresh_rule, lambda r: -SIGMA, lineages * length, 1, seed + 4)
    out["power 1σ (fresh head)"] = f"{len(s['promotions']) / s['candidates']:.0%}"
    for name, mix in MIXES.items():
        s = stream(rule, lambda r, mix=mix: draw(mix, r), lineages, length, seed + 2)
        per100 = 100 / s["runs"]
        gain = sum(p[0] for p in s["promotions"])
        false = sum(1 for p in s["promotions"] if p[1] >= 0)
        bias = [p[2] / SIGMA for p in s["promotions"]]
        out[f"{name}: gain /100 runs"] = f"{gain * per100:.4f}"
        out[f"{name}: false prom /100 runs"] = f"{false * per100:.2f}"
        out[f"{name}: head bias (σ)"] = f"{statistics.fmean(bias):+.2f}" if bias else "-"
        out[f"{name}: runs/candidate"] = f"{s['runs'] / s['candidates']:.2f}"
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lineages", type=int, default=100)
    ap.add_argument("--length", type=int, default=50, help="candidates per lineage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="selection.* knobs of the new rule, e.g. alpha=0.2 head_runs=6 (default: the config's)")
    ap.add_argument("--fresh-dof", type=int, default=20,
                    help="fresh-head block: dof of σ the new rule already has (a population some trials in)")
    ap.add_argument("--only-new", action="store_true", help="leave the other rules out (for tuning)")
    args = ap.parse_args(argv)
    sel = SelectionConfig()
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(sel, key, type(getattr(sel, key))(value))
    new = "new: " + rule_of(sel).describe() + f", head {sel.head_runs}/{sel.confirm_head_runs}"
    rules = {"keep-if-lower": (keep_if_lower, keep_if_lower),
             "shipped (2×std of 3 seeds)": (shipped, shipped),
             "shipped (h100 margin 0.0234)": (lambda lin, e: shipped(lin, e, fixed=0.0234),) * 2,
             new: (lambda lin, e: sequential(lin, e, sel),
                   lambda lin, e: sequential(lin, e, sel, noise_dof=args.fresh_dof))}
    if args.only_new:
        rules = {k: v for k, v in rules.items() if k.startswith("new")}
    t0 = time.time()
    table = {name: figures(rule, fresh, args.lineages, args.length, args.seed)
             for name, (rule, fresh) in rules.items()}
    print(f"σ = {SIGMA}, {args.lineages} lineages x {args.length} candidates per stream, seed {args.seed}; "
          f"fresh head: {args.lineages * args.length} one-candidate members ({SEED_RUNS} seed runs for the old "
          f"rules; head_runs {sel.head_runs} and σ from {args.fresh_dof} more dof for the new); "
          f"{time.time() - t0:.0f} s")
    names = list(table)
    width = max(len(k) for k in table[names[0]])
    print("| " + "figure".ljust(width) + " | " + " | ".join(names) + " |")
    print("| " + "-" * width + " |" + "|".join("---" for _ in names) + "|")
    for key in table[names[0]]:
        print("| " + key.ljust(width) + " | " + " | ".join(table[n][key] for n in names) + " |")


if __name__ == "__main__":
    main()
