"""The driver's picture of a population: jobs and their seeds, scores and noise per device kind, verdicts.

Plain data and pure functions, rebuilt from the archive's trial records; the Ray driver only moves data."""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field

from judge import effect_prior
from judge import verdict as judge_verdict
from judge.noise import Noise, noise_by_key, pooled
from orchestrator.fingerprint import source_hash

BASELINE = "baseline"        # proposer name of the seed's noise-floor runs
REFERENCE = "reference"      # proposer name of head runs on a device kind (too few there to compare with)
LOG_TAIL_CHARS = 2000        # of a crashed or timed-out trial's log kept in its ledger row
TAIL_STATUSES = ("crash", "timeout")
SEGMENT_MARK = " [segment "  # in the Scores device key of a run from an earlier score segment (segment_device)
RUNS_PER_TRIAL = 1000        # seeds of trial k are k*1000 .. k*1000+999: no two runs ever share one


def trial_number(trial_id: str) -> int:
    """The number in a trial id ('t00012' -> 12, 't00012.r1' -> 12); -1 when it has none."""
    digits = "".join(ch for ch in trial_id.split(".")[0] if ch.isdigit())
    return int(digits) if digits else -1


def run_seed(trial_id: str, run_index: int) -> int:
    """The seed of run `run_index` of a trial: a pure function of the two, the same after a resume."""
    if not 0 <= run_index < RUNS_PER_TRIAL:
        raise ValueError(f"run_seed: run index {run_index} of {trial_id} is outside 0..{RUNS_PER_TRIAL - 1}")
    return max(trial_number(trial_id), 0) * RUNS_PER_TRIAL + run_index


def rule_of(cfg_selection) -> judge_verdict.Rule:
    """The verdict rule the selection config asks for."""
    s = cfg_selection
    default = effect_prior.Prior(s.prior_null, s.prior_mean, s.prior_sd)
    return judge_verdict.Rule(promote_at=s.promote_at, discard_at=s.discard_at, max_runs=s.max_runs,
                              default=default, prior_weight=s.prior_weight)


def head_runs_wanted(cfg_selection, runs: int) -> int:
    """The head's weight (in runs) on a device kind before a candidate with `runs` runs is judged against it:
    selection.head_runs at its first run, selection.rerun_head_runs from its second (a head's runs accumulate)."""
    s = cfg_selection
    return max(s.head_runs, s.rerun_head_runs) if runs >= 2 else s.head_runs


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
    want_runs: int = 1                   # a reference job: runs of the head it is to add
    cost: dict = field(default_factory=dict)     # what proposing it cost (agent_seconds, agent_log, llm_* columns)

    @property
    def hash(self) -> str:
        return source_hash(self.source)

    def run_id(self) -> str:
        return self.trial_id if not self.runs else f"{self.trial_id}.r{len(self.runs)}"

    def next_seed(self) -> int:
        return run_seed(self.trial_id, len(self.runs))


@dataclass
class Scores:
    """val_bpb of each source (by hash) on each device kind, from ok runs: the runs that score it (not the ones
    that selected a promotion: its posterior scores it instead) and all its runs (for the noise); and the gaps of
    decided candidates, the data of the prior over edit effects."""
    by_source: dict = field(default_factory=dict)    # (hash, device) -> [val_bpb that score the source]
    shrunk: dict = field(default_factory=dict)       # (hash, device) -> [posterior mean, weight] of a promotion
    effects: dict = field(default_factory=dict)      # effect_prior.bin_of(gap, se) -> verdicts there
    repeats: dict = field(default_factory=dict)      # (hash, device, budget s) -> [every ok val_bpb]
    curves: dict = field(default_factory=dict)       # (hash, device) -> loss curve of one run
    trial_of: dict = field(default_factory=dict)     # (hash, device) -> first trial id judged
    startups: dict = field(default_factory=dict)     # device -> [start-up seconds of seed runs]
    kinds: dict = field(default_factory=dict)        # hash -> [device kinds judged, sorted]: look-ups stay O(1)
    repeated: dict = field(default_factory=dict)     # (device, budget s) -> {repeats key with >= 2 runs: None}
    fitted: dict = field(default_factory=dict, compare=False, repr=False)   # (verdicts, rule) -> Prior: a cache

    def add(self, src_hash: str, device: str, result: dict, trial_id: str, scores_it: bool = True) -> None:
        key = (src_hash, device)
        self.judged(src_hash, device, trial_id)
        if result.get("status") == "ok" and result.get("val_bpb") is not None:
            value = float(result["val_bpb"])
            at = (src_hash, device, budget_key(result))
            values = self.repeats.setdefault(at, [])
            values.append(value)
            if len(values) == 2:                     # the noise pools only these: it never walks every source
                self.repeated.setdefault((device, at[2]), {})[at] = None
            if scores_it:
                self.by_source.setdefault(key, []).append(value)
            if result.get("loss_curve"):
                self.curves.setdefault(key, result["loss_curve"])

    def judged(self, src_hash: str, device: str, trial_id: str) -> None:
        """Note that `trial_id` judged this source on this device kind (the first one is kept)."""
        self.trial_of.setdefault((src_hash, device), trial_id)
        known = self.kinds.setdefault(src_hash, [])
        if device not in known:
            known.append(device)
            known.sort()

    def runs(self, src_hash: str, device: str) -> list[float]:
        return list(self.by_source.get((src_hash, device), []))

    def estimate(self, src_hash: str, device: str) -> judge_verdict.HeadEstimate | None:
        """The source's score there: its scoring runs, with a promotion's posterior as `weight` runs of its mean."""
        values = self.by_source.get((src_hash, device), ())
        mean, weight = self.shrunk.get((src_hash, device), (0.0, 0.0))
        total = weight + len(values)
        if total <= 0:
            return None
        return judge_verdict.HeadEstimate((mean * weight + sum(values)) / total, total)

    def mean(self, src_hash: str, device: str) -> float | None:
        found = self.estimate(src_hash, device)
        return None if found is None else float(found.mean)

    def weight(self, src_hash: str, device: str) -> float:
        found = self.estimate(src_hash, device)
        return 0.0 if found is None else found.weight

    def add_effect(self, gap: float, se: float) -> None:
        at = effect_prior.bin_of(gap, se)
        self.effects[at] = self.effects.get(at, 0) + 1

    def prior(self, rule: judge_verdict.Rule) -> effect_prior.Prior:
        """The prior over edit effects the recorded verdicts show (a pure function of them; fitted once per count)."""
        key = (sum(self.effects.values()), rule.default, rule.prior_weight)
        if key not in self.fitted:
            self.fitted.clear()
            self.fitted[key] = effect_prior.fit(self.effects, rule.default, rule.prior_weight)
        return self.fitted[key]

    def judged_kinds(self, src_hash: str) -> list[str]:
        """Device kinds on which this source was judged (sorted)."""
        return list(self.kinds.get(src_hash, []))

    def noise(self, device: str, budget: float | None, extra=()) -> Noise:
        """σ pooled over every source run more than once on this device kind at this budget (plus `extra`,
        the runs of a candidate not recorded yet)."""
        key = round(float(budget or 0.0), 1)
        groups = [self.repeats[at] for at in self.repeated.get((device, key), ())]
        return pooled(groups + [list(extra)])

    def noise_table(self) -> dict:
        """{(device kind, budget seconds): Noise} over everything recorded."""
        groups = {key: [self.repeats[at] for at in keys] for key, keys in self.repeated.items()}
        return noise_by_key(groups)


def budget_key(result: dict) -> float:
    """The budget a run was given, rounded to 0.1 s: runs at one budget share one noise estimate."""
    return round(float(result.get("budget_seconds") or 0.0), 1)


def score_row(scores: Scores, src_hash: str, device: str, row: dict, curve=None) -> None:
    """A recorded trial's runs into the scores (all count for the noise); a promotion is scored by its posterior
    (head_score, head_weight) and by none of the runs that selected it (an earlier rule's promotion: by its
    confirmation runs, those after selection_runs); a decided candidate's gap joins the prior's data."""
    scores.judged(src_hash, device, row["trial_id"])
    runs = [] if row.get("reused_from") else run_scores(row)
    promoted = row.get("verdict") == "promote"
    selected = row_value(row, "selection_runs") if promoted else None
    budget = row_value(row, "budget_seconds")
    for i, v in enumerate(runs):
        scores.add(src_hash, device, {"status": "ok", "val_bpb": v, "budget_seconds": budget,
                                      "loss_curve": curve if i == 0 else None},
                   row["trial_id"], scores_it=not selected or i >= selected)
    if promoted and row_value(row, "head_weight"):
        scores.shrunk[(src_hash, device)] = [float(row["head_score"]), float(row["head_weight"])]
    if row_value(row, "effect") is not None and row_value(row, "effect_se"):
        scores.add_effect(float(row["effect"]), float(row["effect_se"]))


def row_value(row: dict, key: str):
    """A ledger row's value, None for a missing one or a NaN (pandas' empty cell)."""
    value = row.get(key)
    return None if value is None or value != value else value       # value != value: NaN


def run_scores(record: dict) -> list[float]:
    """The val_bpb of each run an ok trial record rests on (its run_scores list, else its val_bpb)."""
    if record.get("status") != "ok":
        return []
    if isinstance(record.get("run_scores"), str) and record["run_scores"]:
        return [float(v) for v in json.loads(record["run_scores"])]
    value = record.get("val_bpb")
    return [] if value is None or value != value else [float(value)]     # value != value: NaN from pandas


def segment_device(device: str, segment, current: int) -> str:
    """The device-kind key a recorded run is scored under: its device kind when it ran in the current score
    segment (config_change.py); a run of another segment stays apart ('cpu [segment 0]'), so it is never the
    reference of this one's candidates: the head is re-measured here, as on a new device kind."""
    number = int(segment or 0)
    return device if number == current else f"{device}{SEGMENT_MARK}{number}]"


def of_current_segment(device_key: str) -> bool:
    """Whether a Scores device key holds runs of the current segment (see segment_device)."""
    return SEGMENT_MARK not in device_key


def head_key(scores: Scores, head_hash: str) -> str | None:
    """The device key whose runs score a head: the first kind by name of the current segment, else of an
    earlier one; None when nothing scored it."""
    kinds = [dev for dev in scores.judged_kinds(head_hash) if scores.estimate(head_hash, dev)]
    current = [dev for dev in kinds if of_current_segment(dev)]
    return (current or kinds)[0] if kinds else None


def head_score(scores: Scores, head_hash: str) -> float | None:
    """A head's score: the mean of its scoring runs under head_key; None when nothing scored it."""
    key = head_key(scores, head_hash)
    return None if key is None else scores.mean(head_hash, key)


def key_segment(device_key: str, current: int) -> int:
    """The score segment of a Scores device key (see segment_device)."""
    if of_current_segment(device_key):
        return current
    return int(device_key.rsplit(SEGMENT_MARK, 1)[1].rstrip("]"))


def margins(scores: Scores, head_hash: str, rule: judge_verdict.Rule) -> dict:
    """{device kind: how far below the head one run must land to be promoted}, from the pooled σ of each kind
    and budget (at its dof) and the head's weight there; kinds with no σ, and
    earlier segments (never compared again), are left out."""
    out = {}
    for (device, _budget), noise in scores.noise_table().items():
        weight = scores.weight(head_hash, device)
        if noise.sigma and weight and of_current_segment(device):
            out[device] = judge_verdict.promote_margin(1, weight, noise, rule, scores.prior(rule))
    return out


def reference_runs_needed(scores: Scores, head_hash: str, device: str, head_runs: int) -> int:
    """Runs of the head to add on this device kind before a candidate is compared with it: up to a weight of
    `head_runs` there (see head_runs_wanted); 0 for a head never judged anywhere."""
    if head_score(scores, head_hash) is None:
        return 0
    return max(0, math.ceil(head_runs - scores.weight(head_hash, device) - 1e-9))


def head_reference(scores: Scores, head_hash: str, device: str) -> tuple[judge_verdict.HeadEstimate | None, str]:
    """The head's estimate to compare with: same device kind when known, else another kind (noted)."""
    same = scores.estimate(head_hash, device)
    if same:
        return same, f"same device ({device})"
    other = [dev for dev in scores.judged_kinds(head_hash)     # never an earlier segment's
             if dev != device and of_current_segment(dev) and scores.estimate(head_hash, dev)]
    if other:
        return scores.estimate(head_hash, other[0]), f"cross-device ({other[0]}; no score on {device})"
    return None, "no head score"


def judge_job(job: Job, scores: Scores, head_hash: str, rule: judge_verdict.Rule, parent_source: str) -> dict:
    """Verdict for a job whose latest run finished: rerun, promote, discard, or the failure status;
    with the evidence it rests on (the ledger's verdict columns)."""
    last = job.runs[-1]
    if last.get("status") != "ok":
        return {"kind": "discard", "decided_by": f"status {last.get('status')}: {last.get('reason', '')}"[:300],
                "runs": len(job.runs), "rule": rule.describe()}
    device = last.get("device", "")
    head, how = head_reference(scores, head_hash, device)
    values = [r["val_bpb"] for r in job.runs if r.get("status") == "ok"]
    noise = scores.noise(device, budget_key(last), values)
    seed_only = job.proposer != BASELINE and judge_verdict.is_seed_only_change(parent_source, job.source)
    v = judge_verdict.decide(values, head, noise, rule, seed_only, scores.prior(rule))
    return verdict_record(v, noise, rule, head, how)


def verdict_record(v: judge_verdict.Verdict, noise: Noise, rule: judge_verdict.Rule,
                   head: judge_verdict.HeadEstimate | None, how: str) -> dict:
    """The verdict as the ledger's columns: margin (the gap in val_bpb one run needs), σ and dof, the evidence
    (P(win)) and its bar, the gap and its standard error (in σ), a promotion's posterior score and weight."""
    return {"kind": v.kind, "decided_by": f"{v.decided_by} [{how}]", "runs": v.runs, "margin": v.margin,
            "head_runs": None if head is None else round(head.weight, 3), "sigma": noise.sigma,
            "sigma_dof": noise.dof, "evidence": v.evidence, "bar": v.bar, "rule": rule.describe(),
            "head_score": v.head_score, "head_weight": v.head_weight, "effect": v.gap, "effect_se": v.gap_se,
            "selection_runs": v.runs}


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
        "decided_by": verdict.get("decided_by"), "head_runs": verdict.get("head_runs"),
        "sigma": verdict.get("sigma"), "sigma_dof": verdict.get("sigma_dof"), "evidence": verdict.get("evidence"),
        "bar": verdict.get("bar"), "rule": verdict.get("rule"), "selection_runs": verdict.get("selection_runs"),
        "head_score": verdict.get("head_score"), "head_weight": verdict.get("head_weight"),
        "effect": verdict.get("effect"), "effect_se": verdict.get("effect_se"),
        "started_at": timeline.get("launch") or now,
        "finished_at": timeline.get("judge_end") or timeline.get("finish") or now,
        "reason": result.get("reason", ""), "message": job.message, "reused_from": reused_from,
        "attempt": job.attempt, "infra_failures": job.infra_failures,
        "slot": slot.get("slot"), "timeline": json.dumps(run_timelines(job)),
        "log_tail": (result.get("log_tail") or "")[-LOG_TAIL_CHARS:] if result.get("status") in TAIL_STATUSES else None,
        **job.cost,
    }
