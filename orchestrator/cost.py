"""What the search spent per promoted improvement: device hours, agent seconds, LLM tokens and dollars.

Pure pandas on ledger rows; report.py writes the tables (cost.tsv and a summary.md section)."""
from __future__ import annotations

import json

import pandas as pd

COLUMNS = ("trials", "promoted", "gpu_hours", "agent_seconds", "llm_tokens", "llm_cost")
PER = ("gpu_hours", "agent_seconds", "llm_tokens", "llm_cost")


def device_seconds(row) -> float:
    """Seconds of device time a trial row used: each run's launch to judge end, else its total_seconds."""
    text = row.get("timeline")
    try:
        runs = json.loads(text) if isinstance(text, str) and text else []
    except ValueError:
        runs = []
    spans = [r["judge_end"] - r["launch"] for r in runs if isinstance(r, dict)
             and isinstance(r.get("judge_end"), (int, float)) and isinstance(r.get("launch"), (int, float))]
    if spans:
        return float(sum(spans))
    total = row.get("total_seconds")
    return float(total) if isinstance(total, (int, float)) and total == total else 0.0


def per_trial(trials: pd.DataFrame) -> pd.DataFrame:
    """One line per trial: member, proposer, promoted and the four costs."""
    rows = trials.to_dict("records")
    return pd.DataFrame({
        "member": [r.get("member") for r in rows], "proposer": [r.get("proposer") for r in rows],
        "promoted": [bool(r.get("promoted") is True) for r in rows],
        "gpu_hours": [device_seconds(r) / 3600 for r in rows],
        "agent_seconds": [_number(r.get("agent_seconds")) for r in rows],
        "llm_tokens": [_number(r.get("llm_prompt_tokens")) + _number(r.get("llm_completion_tokens")) for r in rows],
        "llm_cost": [_number(r.get("llm_cost")) for r in rows]})


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and value == value else 0.0


def cost_table(trials: pd.DataFrame, by: str) -> pd.DataFrame:
    """Totals and per-promotion costs grouped by `by` (member | proposer), with an 'all' line first.
    Per-promotion columns are empty where nothing was promoted."""
    costs = per_trial(trials)
    groups = [("all", costs)] + [(str(k), g) for k, g in costs.groupby(by, sort=True)] if len(costs) else []
    lines = []
    for name, g in groups:
        line = {by: name, "trials": len(g), "promoted": int(g["promoted"].sum())}
        line.update({c: float(g[c].sum()) for c in PER})
        line.update({f"{c}_per_improvement": (line[c] / line["promoted"] if line["promoted"] else None) for c in PER})
        lines.append(line)
    return pd.DataFrame(lines, columns=[by, *COLUMNS, *(f"{c}_per_improvement" for c in PER)])
