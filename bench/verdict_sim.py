"""Synthetic streams of candidates through popsearch's own verdict code, against keep-if-lower and the old rules.

Prints one table: null edits promoted, power at effect/σ, true gain per 100 GPU runs, head bias, runs/candidate."""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.config import SelectionConfig                     # noqa: E402
from orchestrator.fingerprint import source_hash                    # noqa: E402
from orchestrator.population import (Job, Scores, head_runs_wanted, judge_job, reference_runs_needed,  # noqa: E402
                                     rule_of, score_row)

SIGMA = 0.0117               # H200, 300-s budget, 3 seeds (issue 9)
DEVICE, BUDGET = "h200", 300.0
SEED_RUNS = 3
MIXES = {                    # name -> [(share, low, high)] of edit effects in val_bpb (negative = a win)
    "issue": [(0.4, 0.0, 0.0), (0.4, 0.002, 0.02), (0.2, -0.02, -0.002)],
    "harder": [(0.5, 0.0, 0.0), (0.4, 0.001, 0.01), (0.1, -0.01, -0.001)],
}
NEAR_ONE_SIGMA = (0.8 * SIGMA, 1.2 * SIGMA)     # the mix's wins counted as "about 1σ" for power inside a mix


class Lineage:
    """One member: its head's true val_bpb, GPU runs spent, and each candidate's (effect, promoted, head bias)."""
    def __init__(self, rng: random.Random, name: str):
        self.rng, self.name, self.true, self.runs = rng, name, 1.0, 0
        self.outcomes: list[tuple[float, bool, float | None]] = []

    def run(self, true: float) -> float:
        self.runs += 1
        return self.rng.gauss(true, SIGMA)

    def promote(self, effect: float, score: float) -> None:
        self.true += effect
        self.outcomes.append((effect, True, score - self.true))

    def discard(self, effect: float) -> None:
        self.outcomes.append((effect, False, None))


class KeepIfLower:
    """The single-GPU loop: one run; kept when lower than the last kept run's score."""
    def __init__(self, lineages):
        self.head = {lin.name: statistics.fmean(lin.run(lin.true) for _ in range(SEED_RUNS)) for lin in lineages}

    def step(self, lin: Lineage, e: float) -> None:
        score = lin.run(lin.true + e)
        if score < self.head[lin.name]:
            self.head[lin.name] = score
            lin.promote(e, score)
        else:
            lin.discard(e)


class Shipped:
    """The rule as first shipped, re-implemented here from its old verdict.decide / margin_for: margin = fixed,
    else multiple x std of the seed runs; rerun while better but inside it; the head keeps the mean."""
    def __init__(self, lineages, fixed: float = 0.0, multiple: float = 2.0, max_runs: int = 2):
        self.max_runs, self.head, self.margin = max_runs, {}, {}
        for lin in lineages:
            seeds = [lin.run(lin.true) for _ in range(SEED_RUNS)]
            self.margin[lin.name] = fixed if fixed > 0 else multiple * statistics.stdev(seeds)
            self.head[lin.name] = statistics.fmean(seeds)

    def step(self, lin: Lineage, e: float) -> None:
        head, margin = self.head[lin.name], self.margin[lin.name]
        runs = [lin.run(lin.true + e)]
        while head - margin <= statistics.fmean(runs) < head and len(runs) < self.max_runs:
            runs.append(lin.run(lin.true + e))
        mean = statistics.fmean(runs)
        if mean < head - margin:
            self.head[lin.name] = mean
            lin.promote(e, mean)
        else:
            lin.discard(e)


class Popsearch:
    """The rule as built, through popsearch's own Scores / judge_job / score_row / head_runs_wanted: one Scores
    per population (σ and the prior over effects are the population's); learn=False keeps the default prior."""
    def __init__(self, lineages, sel: SelectionConfig, learn: bool = True):
        self.sel, self.rule, self.learn, self.scores, self.n = sel, rule_of(sel), learn, Scores(), 0
        self.head = {}
        for lin in lineages:
            seed = self.job(lin.name, f"SEED = '{lin.name}'\n", "baseline")
            seed.runs = [_ok(lin.run(lin.true)) for _ in range(sel.noise_seeds)]
            self.record(seed, {"kind": "baseline"})
            self.head[lin.name] = seed.source

    def job(self, member: str, source: str, proposer: str) -> Job:
        self.n += 1
        return Job(f"t{self.n:06d}", member, "", "", source, proposer, "")

    def record(self, job: Job, verdict: dict) -> None:
        row = {"trial_id": job.trial_id, "status": "ok", "verdict": verdict["kind"],
               "run_scores": json.dumps([r["val_bpb"] for r in job.runs]), "budget_seconds": BUDGET,
               "selection_runs": verdict.get("selection_runs"), "head_score": verdict.get("head_score"),
               "head_weight": verdict.get("head_weight")}
        if self.learn:
            row.update(effect=verdict.get("effect"), effect_se=verdict.get("effect_se"))
        score_row(self.scores, job.hash, DEVICE, row)

    def top_up(self, lin: Lineage, head_src: str, wanted: int) -> None:
        """The driver's reference runs: the head's weight on the device kind up to `wanted`."""
        head_hash = source_hash(head_src)
        short = reference_runs_needed(self.scores, head_hash, DEVICE, wanted)
        if short:
            ref = self.job(lin.name, head_src, "reference")
            ref.runs = [_ok(lin.run(lin.true)) for _ in range(short)]
            self.record(ref, {"kind": "reference"})

    def step(self, lin: Lineage, e: float) -> None:
        head_src = self.head[lin.name]
        job = self.job(lin.name, f"X = {self.n}  # {lin.name}\n", "mutate")
        head_hash = source_hash(head_src)
        while True:
            job.runs.append(_ok(lin.run(lin.true + e)))
            self.top_up(lin, head_src, head_runs_wanted(self.sel, len(job.runs)))
            v = judge_job(job, self.scores, head_hash, self.rule, head_src)
            if v["kind"] != "rerun":
                break
        self.record(job, v)
        if v["kind"] == "promote":
            self.head[lin.name] = job.source
            lin.promote(e, v["head_score"])
        else:
            lin.discard(e)


def _ok(value: float) -> dict:
    return {"status": "ok", "val_bpb": value, "device": DEVICE, "budget_seconds": BUDGET}


def draw(mix, rng: random.Random) -> float:
    share = rng.random()
    for p, low, high in mix:
        share -= p
        if share < 0:
            return rng.uniform(low, high)
    return 0.0


def stream(make_rule, effects_of, populations: int, members: int, length: int, seed: int) -> dict:
    """`populations` populations of `members` members, `length` candidates each, taken in turns; pooled figures."""
    rng = random.Random(seed)
    outcomes, runs = [], 0
    for p in range(populations):
        lineages = [Lineage(rng, f"m{i}") for i in range(members)]
        rule = make_rule(lineages)
        for _ in range(length):
            for lin in lineages:
                rule.step(lin, effects_of(rng))
        for lin in lineages:
            outcomes += lin.outcomes
            runs += lin.runs
    return {"outcomes": outcomes, "runs": runs}


def promoted_share(outcomes, keep=lambda e: True) -> float:
    chosen = [o for o in outcomes if keep(o[0])]
    return sum(o[1] for o in chosen) / max(len(chosen), 1)


def figures(make_rule, pops: int, members: int, length: int, seed: int) -> dict:
    """In sequence: populations of `members` x `length` candidates. Fresh head: one-candidate members in
    one-member populations, so every candidate meets a newly measured head and the prior has learned nothing."""
    out, fresh = {}, pops * members * length
    null = stream(make_rule, lambda r: 0.0, pops, members, length, seed)
    out["null promoted (in sequence)"] = f"{promoted_share(null['outcomes']):.1%}"
    s = stream(make_rule, lambda r: 0.0, fresh, 1, 1, seed + 3)
    out["null promoted (fresh head)"] = f"{promoted_share(s['outcomes']):.1%}"
    for k in (0.25, 0.5, 1.0, 2.0):
        s = stream(make_rule, lambda r, k=k: -k * SIGMA, pops, members, length, seed + 1)
        out[f"power {k:g}σ (in sequence)"] = f"{promoted_share(s['outcomes']):.0%}"
    s = stream(make_rule, lambda r: -SIGMA, fresh, 1, 1, seed + 4)
    out["power 1σ (fresh head)"] = f"{promoted_share(s['outcomes']):.0%}"
    for name, mix in MIXES.items():
        s = stream(make_rule, lambda r, mix=mix: draw(mix, r), pops, members, length, seed + 2)
        per100, o = 100 / s["runs"], s["outcomes"]
        won = [x for x in o if x[1]]
        bias = [x[2] / SIGMA for x in won]
        out[f"{name}: gain /100 runs"] = f"{-sum(x[0] for x in won) * per100:.4f}"
        out[f"{name}: false prom /100 runs"] = f"{sum(1 for x in won if x[0] >= 0) * per100:.2f}"
        out[f"{name}: head bias (σ)"] = f"{statistics.fmean(bias):+.2f}" if bias else "-"
        out[f"{name}: runs/candidate"] = f"{s['runs'] / len(o):.2f}"
        out[f"{name}: its nulls promoted"] = f"{promoted_share(o, lambda e: e == 0):.1%}"
        if name == "issue":
            low, high = NEAR_ONE_SIGMA
            out[f"{name}: its ~1σ wins promoted"] = f"{promoted_share(o, lambda e: low <= -e <= high):.0%}"
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--populations", type=int, default=25)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--length", type=int, default=50, help="candidates per member")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="selection.* knobs of the new rule, e.g. promote_at=0.5 head_runs=4 (default: the config's)")
    ap.add_argument("--only-new", action="store_true", help="leave the other rules out (for tuning)")
    args = ap.parse_args(argv)
    sel = SelectionConfig()
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(sel, key, type(getattr(sel, key))(value))
    new = f"new: {rule_of(sel).describe()}, head {sel.head_runs}/{sel.rerun_head_runs}"
    rules = {"keep-if-lower": KeepIfLower, "shipped (2×std of 3 seeds)": Shipped,
             "shipped (h100 margin 0.0234)": lambda lins: Shipped(lins, fixed=0.0234),
             new: lambda lins: Popsearch(lins, sel),
             "new, prior never learned": lambda lins: Popsearch(lins, sel, learn=False)}
    if args.only_new:
        rules = {k: v for k, v in rules.items() if k.startswith("new")}
    t0 = time.time()
    table = {name: figures(rule, args.populations, args.members, args.length, args.seed)
             for name, rule in rules.items()}
    print(f"σ = {SIGMA}; {args.populations} populations x {args.members} members x {args.length} candidates per "
          f"stream, seed {args.seed}; fresh head: {args.populations * args.members * args.length} one-candidate "
          f"members; {SEED_RUNS} seed runs for the old rules; {time.time() - t0:.0f} s")
    names = list(table)
    width = max(len(k) for k in table[names[0]])
    print("| " + "figure".ljust(width) + " | " + " | ".join(names) + " |")
    print("| " + "-" * width + " |" + "|".join("---" for _ in names) + "|")
    for key in table[names[0]]:
        print("| " + key.ljust(width) + " | " + " | ".join(table[n][key] for n in names) + " |")


if __name__ == "__main__":
    main()
