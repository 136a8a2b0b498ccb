"""The driver's picture of a population: jobs, scores per device kind, margins and verdict records.

Plain data and pure functions, rebuilt from the archive's trial records; the Ray driver only moves data."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field

from judge import verdict as judge_verdict
from orchestrator.archive import source_hash

BASELINE = "baseline"        # proposer name of the seed's noise-floor runs
REFERENCE = "reference"      # proposer name of a head re-run on another device kind
LOG_TAIL_CHARS = 2000        # of a crashed or timed-out trial's log kept in its ledger row
TAIL_STATUSES = ("crash", "timeout")


@dataclass
class Job:
    """One candidate on its way through the GPUs: possibly several runs (seeds) before its verdict."""
    trial_id: str
    member: str
    parent_commit: str
    commit: str                          # the pending commit in the archive
    source: str
    proposer: str
    message: str
    parent_hash: str = ""
    runs: list = field(default_factory=list)     # TrialResult dicts of finished runs
    device_kind: str = ""                # run only on actors of this device kind ('' = any)
    attempt: int = 0                     # dispatches lost to infrastructure failures
    infra_failures: int = 0
    seed_base: int = 0
    cost: dict = field(default_factory=dict)     # what proposing it cost (agent_seconds, agent_log, llm_* columns)

    @property
    def hash(self) -> str:
        return source_hash(self.source)

    def run_id(self) -> str:
        return self.trial_id if not self.runs else f"{self.trial_id}.r{len(self.runs)}"

    def next_seed(self) -> int:
        return self.seed_base + len(self.runs)


@dataclass
class Scores:
    """val_bpb of each source (by hash) on each device kind, from ok runs."""
    by_source: dict = field(default_factory=dict)    # (hash, device) -> [val_bpb]
    curves: dict = field(default_factory=dict)       # (hash, device) -> loss curve of one run
    trial_of: dict = field(default_factory=dict)     # (hash, device) -> first trial id judged
    startups: dict = field(default_factory=dict)     # device -> [start-up seconds of seed runs]

    def add(self, src_hash: str, device: str, result: dict, trial_id: str) -> None:
        key = (src_hash, device)
        self.trial_of.setdefault(key, trial_id)
        if result.get("status") == "ok" and result.get("val_bpb") is not None:
            self.by_source.setdefault(key, []).append(float(result["val_bpb"]))
            if result.get("loss_curve"):
                self.curves.setdefault(key, result["loss_curve"])

    def mean(self, src_hash: str, device: str) -> float | None:
        values = self.by_source.get((src_hash, device))
        return float(statistics.fmean(values)) if values else None

    def any_device_mean(self, src_hash: str) -> tuple[float | None, str]:
        for (h, dev), values in sorted(self.by_source.items()):
            if h == src_hash and values:
                return float(statistics.fmean(values)), dev
        return None, ""


def run_scores(record: dict) -> list[float]:
    """The val_bpb of each run an ok trial record rests on (its run_scores list, else its val_bpb)."""
    if record.get("status") != "ok":
        return []
    if isinstance(record.get("run_scores"), str) and record["run_scores"]:
        return [float(v) for v in json.loads(record["run_scores"])]
    value = record.get("val_bpb")
    return [] if value is None or value != value else [float(value)]     # value != value: NaN from pandas


def margin_for(cfg_selection, baseline_scores: list[float]) -> float:
    """Promotion margin from the seed's spread on one device kind (or the fixed value)."""
    if cfg_selection.margin > 0:
        return cfg_selection.margin
    if len(baseline_scores) < 2:
        return 0.0
    return judge_verdict.margin_for(statistics.stdev(baseline_scores), cfg_selection.margin_std, 0.0)


def needs_reference(scores: Scores, head_hash: str, device: str) -> bool:
    """The head was judged, but never on this device kind: re-run it there before comparing."""
    return scores.mean(head_hash, device) is None and scores.any_device_mean(head_hash)[0] is not None


def head_reference(scores: Scores, head_hash: str, device: str) -> tuple[float | None, str]:
    """The head's score to compare with: same device kind when known, else another kind (noted)."""
    same = scores.mean(head_hash, device)
    if same is not None:
        return same, f"same device ({device})"
    other, dev = scores.any_device_mean(head_hash)
    if other is not None:
        return other, f"cross-device ({dev}; no score on {device})"
    return None, "no head score"


def judge_job(job: Job, scores: Scores, head_hash: str, margin: float, max_runs: int, parent_source: str) -> dict:
    """Verdict for a job whose latest run finished: promote, discard, rerun, or the failure status."""
    last = job.runs[-1]
    if last.get("status") != "ok":
        return {"kind": "discard", "decided_by": f"status {last.get('status')}: {last.get('reason', '')}"[:300],
                "margin": margin, "runs": len(job.runs)}
    device = last.get("device", "")
    head, how = head_reference(scores, head_hash, device)
    values = [r["val_bpb"] for r in job.runs if r.get("status") == "ok"]
    if head is None:
        return {"kind": "discard", "decided_by": "no score for the head to compare with",
                "margin": margin, "runs": len(values)}
    seed_only = job.proposer != BASELINE and judge_verdict.is_seed_only_change(parent_source, job.source)
    v = judge_verdict.decide(values, head, margin, max_runs, seed_only)
    return {"kind": v.kind, "decided_by": f"{v.decided_by} [{how}]", "margin": v.margin, "runs": v.runs}


def run_timelines(job: Job) -> list[dict]:
    """Each run's actor, training seconds and wall-clock stamps, for time accounting per actor."""
    return [{"slot": r.get("slot"), "training_seconds": r.get("training_seconds"), **(r.get("timeline") or {})}
            for r in job.runs if r.get("timeline")]


def ledger_row(job: Job, result: dict, verdict: dict, slot: dict, reused_from: str = "") -> dict:
    """One ledger row (and commit trailer record) for a job's final verdict."""
    ok_runs = [r for r in job.runs if r.get("status") == "ok" and r.get("val_bpb") is not None]
    val = statistics.fmean(r["val_bpb"] for r in ok_runs) if ok_runs else None
    timeline = result.get("timeline") or {}
    now = time.time()
    return {
        "trial_id": job.trial_id, "member": job.member, "parent_commit": job.parent_commit,
        "proposer": job.proposer, "val_loss": result.get("val_loss"), "budget_kind": result.get("budget_kind"),
        "run_scores": json.dumps([r["val_bpb"] for r in ok_runs]), "status": result.get("status"),
        "verdict": verdict["kind"], "val_bpb": val, "budget_seconds": result.get("budget_seconds"),
        "training_seconds": result.get("training_seconds"), "total_seconds": result.get("total_seconds"),
        "startup_seconds": result.get("startup_seconds"), "judge_seconds": result.get("judge_seconds"),
        "device": result.get("device"), "device_speed": slot.get("speed"),
        "budget_factor": slot.get("budget_factor"), "backend": result.get("backend"),
        "peak_vram_mb": result.get("peak_vram_mb"), "tokens": result.get("tokens"),
        "steps": result.get("steps"), "params": result.get("params"), "mfu": result.get("mfu"),
        "seed": result.get("seed"), "margin": verdict.get("margin"), "runs": verdict.get("runs"),
        "decided_by": verdict.get("decided_by"), "started_at": timeline.get("launch") or now,
        "finished_at": timeline.get("judge_end") or timeline.get("finish") or now,
        "reason": result.get("reason", ""), "message": job.message, "reused_from": reused_from,
        "attempt": job.attempt, "infra_failures": job.infra_failures,
        "slot": slot.get("slot"), "timeline": json.dumps(run_timelines(job)),
        "log_tail": (result.get("log_tail") or "")[-LOG_TAIL_CHARS:] if result.get("status") in TAIL_STATUSES else None,
        **job.cost,
    }
