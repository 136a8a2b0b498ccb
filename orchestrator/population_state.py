"""The population as one pure state machine: `apply(event)` for what happened, pure decisions for what next.

The live driver applies each event as it happens; rebuild replays the archive's records and the journal through
the same `apply` (orchestrator/replay.py), so a resumed population is the one that was killed. No git, torch, Ray."""
from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field

from orchestrator import selection
from orchestrator.population import (BASELINE, REFERENCE, Job, Scores, head_runs_wanted, head_score, judge_job,
                                     reference_runs_needed, row_value, rule_of, run_scores, score_row,
                                     segment_device, trial_number)
from orchestrator.selection import MemberState

MUTATE = "mutate"            # the proposer whose draws come from the per-member mutation stream
BULKY = ("loss_curve", "log_tail")      # a run's fields the journal leaves out (a curve is up to 4096 points)
FINISH, RUN_AGAIN, ASK_REFERENCE, WAIT_BASELINE = "finish", "run again", "ask reference", "wait for baseline"


# ---- events ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Started:
    """The population's first members and the source hash of their (seed) head."""
    heads: tuple                 # ((member, head source hash), ...)


@dataclass(frozen=True)
class Proposed:
    """A trial id was taken (a pending candidate, a seed or reference run, or a rejected proposal)."""
    trial_id: str
    member: str = ""
    proposer: str = ""


@dataclass(frozen=True)
class RunSaved:
    """A trial not judged yet changed: its bookkeeping after its latest run (see work_of)."""
    work: dict


@dataclass(frozen=True)
class Recorded:
    """A trial's ledger row was recorded; source_hash: its train.py's; curve: the loss curve of one ok run."""
    row: dict
    source_hash: str
    curve: list | None = None


@dataclass(frozen=True)
class Culled:
    """Stale members retired, each replaced by a fork of a top one: ((retired, forked from, new member), ...)."""
    plan: tuple


@dataclass(frozen=True)
class HeadsSeen:
    """The archive's living members and their head hashes: members the journal missed (a kill between a fork
    and its journal line, an archive older than the journal) are added, members no longer alive retired."""
    heads: tuple                 # ((member, head source hash), ...)


# ---- the state ------------------------------------------------------------------------------------------

@dataclass
class PopulationState:
    """Everything the driver knows about the population that outlives one driver process."""
    seed: int = 0
    segment: int = 0                                 # the score segment now (config_change.py): earlier ones apart
    members: dict = field(default_factory=dict)      # name -> MemberState, retired ones too (alive False)
    head_hash: dict = field(default_factory=dict)    # living member -> source hash of its head
    scores: Scores = field(default_factory=Scores)
    baseline: dict = field(default_factory=dict)     # device kind -> val_bpb of the seed's runs
    finished: int = 0                                # recorded trials (infra rows aside): stop.max_trials counts these
    candidates_finished: int = 0                     # ... of which candidates (not seed or reference runs)
    next_id: int = 0                                 # number of the next trial id
    proposals: dict = field(default_factory=dict)    # member -> mutate proposals so far: its mutation stream's counter
    work: dict = field(default_factory=dict)         # trial id not judged yet -> its bookkeeping after its latest run
    references: dict = field(default_factory=dict)   # (head hash, device kind) -> head runs asked for there
    recorded: set = field(default_factory=set)       # trial ids recorded

    def apply(self, event) -> None:
        HANDLERS[type(event)](self, event)

    def alive(self) -> dict:
        """{name: MemberState} of the living members."""
        return {m: self.members[m] for m in self.head_hash}

    def refresh(self, hashes) -> None:
        """Each living member whose head is one of `hashes`: its head score is the mean of that head's runs
        (first device kind that has any), and its best score takes the lower of the two."""
        for name, h in self.head_hash.items():
            if h not in hashes:
                continue
            score = head_score(self.scores, h)
            if score is not None:
                st = self.members[name]
                best = score if st.best_score is None else min(st.best_score, score)
                self.members[name] = dataclasses.replace(st, head_score=score, best_score=best)


def _started(state: PopulationState, e: Started) -> None:
    for name, h in e.heads:
        state.members.setdefault(name, MemberState(name=name))
        state.head_hash[name] = h
    state.refresh({h for _, h in e.heads})


def _proposed(state: PopulationState, e: Proposed) -> None:
    state.next_id = max(state.next_id, trial_number(e.trial_id) + 1)
    if e.proposer == MUTATE:
        state.proposals[e.member] = state.proposals.get(e.member, 0) + 1


def _run_saved(state: PopulationState, e: RunSaved) -> None:
    tid = e.work["trial_id"]
    if tid in state.recorded:
        return
    state.work[tid] = e.work
    if e.work.get("wanted"):
        key = (e.work["head_hash"], e.work["device_kind"])
        state.references[key] = max(state.references.get(key, 0), e.work["wanted"])


def _recorded(state: PopulationState, e: Recorded) -> None:
    r, h = e.row, e.source_hash
    tid = r["trial_id"]
    if tid in state.recorded:
        return
    state.recorded.add(tid)
    state.work.pop(tid, None)
    state.next_id = max(state.next_id, trial_number(tid) + 1)
    if r.get("status") == "infra":              # infrastructure rows never count
        return
    state.finished += 1
    _score_runs(state, r, h, e.curve)
    proposer = r.get("proposer")
    if proposer == BASELINE:
        state.baseline.setdefault(score_device(state, r), []).extend(run_scores(r))
        if r.get("status") == "ok" and row_value(r, "startup_seconds") is not None:
            state.scores.startups.setdefault(r.get("device") or "", []).append(float(r["startup_seconds"]))
    elif proposer != REFERENCE:
        _candidate_recorded(state, r, h)
    state.refresh({h})


def _score_runs(state: PopulationState, r: dict, h: str, curve) -> None:
    """The record's runs into the scores (population.score_row), under its score segment's device key."""
    score_row(state.scores, h, score_device(state, r), r, curve)


def score_device(state: PopulationState, r: dict) -> str:
    """The device key a record's runs are scored under: its device kind in the current segment, else kept apart."""
    return segment_device(r.get("device") or "", row_value(r, "segment"), state.segment)


def _candidate_recorded(state: PopulationState, r: dict, h: str) -> None:
    state.candidates_finished += 1
    member = r.get("member")
    if member not in state.members:
        return
    promoted = r.get("verdict") == "promote"
    posterior = row_value(r, "head_score") if promoted else None
    score = posterior if posterior is not None else row_value(r, "val_bpb")
    selection.apply_result(state.members, member, score, promoted, state.candidates_finished)
    if promoted and member in state.head_hash:
        state.head_hash[member] = h


def _culled(state: PopulationState, e: Culled) -> None:
    plan = [tuple(p) for p in e.plan]
    selection.apply_forks(state.members, plan, state.candidates_finished)
    for old, parent, child in plan:
        state.head_hash[child] = state.head_hash[parent]
        state.head_hash.pop(old, None)


def _heads_seen(state: PopulationState, e: HeadsSeen) -> None:
    heads = dict(e.heads)
    for name in [m for m in state.head_hash if m not in heads]:
        state.members[name] = dataclasses.replace(state.members[name], alive=False)
        del state.head_hash[name]
    changed = {h for m, h in heads.items() if state.head_hash.get(m) != h}
    for name, h in heads.items():
        state.members.setdefault(name, MemberState(name=name))
        state.head_hash[name] = h
    state.refresh(changed)


HANDLERS = {Started: _started, Proposed: _proposed, RunSaved: _run_saved, Recorded: _recorded,
            Culled: _culled, HeadsSeen: _heads_seen}


# ---- decisions ------------------------------------------------------------------------------------------

def draw(seed: int, *parts) -> random.Random:
    """A random stream that is a pure function of the population seed and `parts` (sha256 of their repr)."""
    digest = hashlib.sha256(repr((seed,) + parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def mutation_rng(state: PopulationState, member: str) -> random.Random:
    """The draws of `member`'s next mutation: (seed, member, its mutate proposals so far)."""
    return draw(state.seed, MUTATE, member, state.proposals.get(member, 0))


def pick_rng(state: PopulationState, attempt: int) -> random.Random:
    """The draws that pick the next proposer and member: (seed, next trial number, attempt), attempt counting
    the picks made while that trial number was next (an agent start takes no trial id)."""
    return draw(state.seed, "pick", state.next_id, attempt)


def cull_plan(state: PopulationState, fraction: float, patience: int) -> list[tuple[str, str, str]]:
    """[(retire, fork_from, new member)] for the cull due now: busy members are not spared (their work is
    stopped or finishes as discarded); new names avoid every member ever; draws from (seed, candidates)."""
    rng = draw(state.seed, "cull", state.candidates_finished)
    alive = state.alive()
    return selection.cull_and_fork(alive, fraction, patience, rng, taken=state.members)


@dataclass(frozen=True)
class Step:
    """What to do with a candidate whose latest run finished: FINISH with `verdict`; RUN_AGAIN (verdict rerun);
    ASK_REFERENCE (`short` more head runs on key's device kind, to `wanted` there; the candidate parks);
    WAIT_BASELINE (the seed's runs are not all in)."""
    action: str
    verdict: dict | None = None
    key: tuple = ()
    short: int = 0
    wanted: int = 0


def next_step(state: PopulationState, job: Job, sel, device: str, baseline_pending: bool, referencing,
              parent_source) -> Step:
    """The decision on `job`'s latest run against its member head on `device` (sel: selection config;
    referencing: (head hash, device kind) whose reference runs are on their way; parent_source: a callable
    giving the parent's train.py, read only when a verdict is due)."""
    if job.member not in state.head_hash:
        return Step(FINISH, {"kind": "discard", "decided_by": f"member {job.member} was retired",
                             "runs": len(job.runs)})
    if baseline_pending:
        return Step(WAIT_BASELINE)
    head_hash = state.head_hash[job.member]
    key = (head_hash, device)
    wanted = head_runs_wanted(sel, len(job.runs))
    short = reference_runs_needed(state.scores, head_hash, device, wanted)
    asked = key in referencing or wanted > state.references.get(key, 0)
    if job.runs[-1].get("status") == "ok" and short and asked:
        return Step(ASK_REFERENCE, key=key, short=short, wanted=wanted)
    verdict = judge_job(job, state.scores, head_hash, rule_of(sel), parent_source())
    if verdict["kind"] == "rerun":
        return Step(RUN_AGAIN, verdict)
    return Step(FINISH, verdict)


def work_of(job: Job, slot: dict, waiting: bool, head_hash: str = "", wanted: int = 0) -> dict:
    """What a trial not judged yet must keep across a resume: its runs (seeds follow from their count), where it
    stands in the verdict, its device kind, and whether it waits to be judged (parked) rather than to run."""
    runs = [{k: v for k, v in r.items() if k not in BULKY} for r in job.runs]
    return {"trial_id": job.trial_id, "runs": runs, "device_kind": job.device_kind, "want_runs": job.want_runs, "attempt": job.attempt,
            "infra_failures": job.infra_failures, "waiting": waiting, "slot": slot or {},
            "head_hash": head_hash, "wanted": wanted}


def restore(job: Job, work: dict | None) -> Job:
    """A pending job as its journal left it (no journal line: a trial with no finished run); an earlier rule's
    `cleared_at` in the line is not read (every run of a candidate now counts alike)."""
    if work:
        job.runs = list(work["runs"])
        job.device_kind, job.want_runs = work["device_kind"], work["want_runs"]
        job.attempt, job.infra_failures = work.get("attempt", 0), work.get("infra_failures", 0)
    return job
