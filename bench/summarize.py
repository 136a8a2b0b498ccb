"""Print the figures of a finished popsearch archive: one row per trial, the noise floor of the seed,
and per-actor time accounting (training share of the actor's wall time).  Usage: summarize.py ARCHIVE"""
from __future__ import annotations

import json
import statistics
import sys

import pandas as pd

COLS = ["trial_id", "slot", "proposer", "status", "verdict", "val_bpb", "steps", "tokens", "training_seconds",
        "startup_seconds", "judge_seconds", "total_seconds", "budget_seconds", "mfu", "peak_vram_mb", "backend"]


def per_trial(df: pd.DataFrame) -> None:
    df = df.copy()
    df["tok_per_s"] = df.tokens / df.training_seconds
    print(df[COLS + ["tok_per_s"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def noise(df: pd.DataFrame) -> None:
    base = df[(df.proposer == "baseline") & (df.status == "ok")]
    for device, g in base.groupby("device"):
        vals = list(g.val_bpb)
        std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        print(f"noise floor on {device}: n={len(vals)} mean={statistics.fmean(vals):.5f} std={std:.5f} "
              f"values={[round(v, 5) for v in vals]}")


def actor_time(df: pd.DataFrame) -> None:
    """Training share per actor: sum of training seconds / (last judge end - first launch); the gaps between
    one training's end and the next training's start on the same actor (the overhead a GPU sees per trial)."""
    runs = [r for t in df.timeline.dropna() for r in json.loads(t)]
    slots = sorted({r["slot"] for r in runs if r.get("slot")})
    total_runs, total_train, first, last = 0, 0.0, float("inf"), 0.0
    for slot in slots:
        mine = sorted((r for r in runs if r.get("slot") == slot), key=lambda r: r.get("start") or r["launch"])
        start, end = min(r["launch"] for r in mine), max(r.get("judge_end") or r.get("finish", 0) for r in mine)
        train = sum(r.get("training_seconds") or 0 for r in mine)
        gaps = [b["start"] - a["finish"] for a, b in zip(mine, mine[1:]) if a.get("finish") and b.get("start")]
        gap = f" gap between trainings: median {statistics.median(gaps):.1f}s max {max(gaps):.1f}s" if gaps else ""
        print(f"actor {slot}: runs={len(mine)} wall={end - start:.1f}s training={train:.1f}s "
              f"share={train / (end - start):.3f} runs/hour={3600 * len(mine) / (end - start):.1f}{gap}")
        total_runs, total_train = total_runs + len(mine), total_train + train
        first, last = min(first, start), max(last, end)
    if slots:
        span = last - first
        print(f"population: actors={len(slots)} runs={total_runs} wall={span:.1f}s "
              f"runs/hour/actor={3600 * total_runs / span / len(slots):.1f} "
              f"training share={total_train / span / len(slots):.3f}")


if __name__ == "__main__":
    frame = pd.read_parquet(sys.argv[1] + "/ledger").sort_values("finished_at")
    per_trial(frame)
    for _, row in frame[frame.status != "ok"].iterrows():
        print(f"{row.trial_id} {row.status}: {str(row.reason)[:800]}")
    noise(frame)
    actor_time(frame)
