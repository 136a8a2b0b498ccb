"""The Ray driver: keeps every trial actor busy, harvests results with ray.wait, records verdicts.

A thin loop over plain functions; what it knows about the population is one PopulationState, changed only by
its events and replayed from the archive and journal on every start, so a killed driver resumes where it was."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

from orchestrator import budget as budget_rules
from orchestrator import config_change, selection, state_snapshot
from orchestrator.archive import Archive, is_archive, member_names
from orchestrator.config import Config, ConfigError, seed_source
from orchestrator.journal import Journal
from orchestrator.journal import first as journal_first
from orchestrator.live import LiveBoard
from orchestrator.population import (BASELINE, REFERENCE, Job, ledger_row, margins, of_current_segment, rule_of,
                                     source_hash, trial_number)
from orchestrator.population_state import (ASK_REFERENCE, RUN_AGAIN, WAIT_BASELINE, Culled, PopulationState,
                                           Proposed, Recorded, RunSaved, Started, cull_plan, mutation_rng,
                                           next_step, pick_rng, restore, work_of)
from orchestrator.replay import last_snapshot, record_hash, replay_from
from orchestrator.state_snapshot import SNAPSHOT_EVERY
from orchestrator.proposers import mutate
from orchestrator.proposers.base import Proposal
from orchestrator.proposers.brief import full_brief

POLL_SECONDS = 1.0
CLUSTER_PROBE_SECONDS = 15.0   # how long the cluster's control store may take to answer before it counts as gone
INBOX_EVERY = 5.0            # seconds between scans of the inbox refs and patch folder
COST_COLUMNS = ("agent_seconds", "agent_log", "llm_prompt_tokens", "llm_completion_tokens", "llm_cost")


class ClusterLost(RuntimeError):
    """The whole Ray cluster is gone: the run stops at once; trials in flight stay pending for resume."""


class Driver:
    """One population run: create or resume the archive, start actors, loop until a stop rule fires."""

    def __init__(self, cfg: Config, out=sys.stdout):
        self.cfg = cfg
        self.out = out
        self.archive_dir = Path(cfg.archive).expanduser().resolve()
        self.state = PopulationState(seed=cfg.seed)   # the population; changed only through self.state.apply
        self.journal: Journal | None = None
        self.snapshot_every = SNAPSHOT_EVERY  # recorded trials between two state snapshots (state_snapshot.py)
        self.picks = (-1, 0)                # (next trial number, picks made while it was next)
        self.segment = 0                    # the score segment of this run's trials (set by open_archive)
        self.ready: deque[Job] = deque()
        self.in_flight: dict = {}           # ray ref -> (job, actor index)
        self.actor_load: dict[int, int] = {}
        self.undecided: list = []           # (job, last result, slot) a resume found waiting for a verdict
        self.t_start = time.time()
        self.agent_refs: dict = {}          # ray ref -> (member, parent commit, proposer) of running agents/endpoints
        self.last_inbox = 0.0
        self.parked: dict = {}              # (head hash, device kind) -> candidates waiting for a reference run
        self.referencing: set = set()       # (head hash, device kind) whose reference runs are queued or running
        self.before_baseline: list = []     # (job, last result, slot) finished before the seed's score existed
        self.culling = False
        self.lost: set[int] = set()         # actor indexes whose actor died (node lost): no dispatch there
        self.replacing: dict = {}           # ray ref of a replacement actor's info() -> (actor index, actor)
        self.shelved: list[Job] = []        # lost to infrastructure max_retries times: pending, for resume
        self.operator_env = checked_operator_settings()

    # ---- the population state (read-only views; events change it) ------------------------------------
    @property
    def finished(self) -> int:
        return self.state.finished

    @property
    def candidates_finished(self) -> int:
        return self.state.candidates_finished

    @property
    def states(self) -> dict:
        return self.state.members

    @property
    def scores(self):
        return self.state.scores

    @property
    def baseline(self) -> dict:
        return self.state.baseline

    def journaled(self, line: dict) -> dict:
        """Append one event line to the journal (fsynced); returns it as a replay will read it back."""
        self.journal.append(line)
        return json.loads(json.dumps(line, default=str))

    # ---- setup -------------------------------------------------------------------------
    def open_archive(self) -> None:
        if is_archive(self.archive_dir):
            self.archive = Archive.open(self.archive_dir)
            self.say(f"resuming population in {self.archive_dir}")
        else:
            names = member_names(self.cfg.population.size)
            self.archive = Archive.create(self.archive_dir, seed_source(self.cfg), names,
                                          "seed: the baseline train.py" + self._override_note())
            self.say(f"created population of {len(names)} in {self.archive_dir}")
        self.segment = self.archive.segment = config_change.record(
            self.archive_dir, self.cfg, trial_number(self.archive.new_trial_id()))
        self.journal = Journal(self.archive_dir)
        self.start_journal()
        save_config(self.cfg, self.archive_dir)

    def start_journal(self) -> None:
        """A population with no trial yet (new, or just adopted) starts its journal with its members' heads; an
        archive with trials from before the journal keeps none (replay takes its members from the lineage)."""
        opening = journal_first(self.archive_dir)      # a started line is always a journal's first
        if (opening and opening["event"] == "started") or self.archive.pending() or self.archive.judged_count():
            return
        heads = self.archive.heads()
        line = self.journaled({"event": "started", "heads": [[m, source_hash(self.archive.source(sha))]
                                                             for m, sha in sorted(heads.items())]})
        self.state.apply(Started(tuple(tuple(pair) for pair in line["heads"])))

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        self.archive.close()

    def _override_note(self) -> str:
        o = self.cfg.population.overrides
        return "" if not o else " with overrides " + ", ".join(f"{k}={v}" for k, v in o.items())

    def rebuild(self) -> None:
        """The population state replayed from the archive and journal; pending trials queued again where they
        stood (their finished runs kept, reruns at their next seed; parked ones judged again first)."""
        fixed = self.archive.repair()       # finish whatever write a kill interrupted
        if fixed.get("promotions") or fixed.get("pending_dropped"):
            self.say(f"repaired interrupted writes: {fixed}")
        found = last_snapshot(self.archive, self.cfg.seed, self.segment)
        self.state = replay_from(self.archive, found, self.cfg.seed, self.segment)
        if found is None:                   # replayed from the first event: the next resume starts from here
            self.save_snapshot()
        for p in self.archive.pending():
            work = self.state.work.get(p.trial_id)
            job = restore(self._job_from_pending(p), work)
            if job.proposer == REFERENCE and work:
                self.referencing.add((job.hash, job.device_kind))
            if work and work["waiting"] and job.runs:
                self.undecided.append((job, job.runs[-1], work["slot"]))
            else:
                self.ready.append(job)
        if self.ready or self.undecided:
            self.say(f"re-dispatching {len(self.ready) + len(self.undecided)} trial(s) that were in flight")

    def _job_from_pending(self, p) -> Job:
        return Job(trial_id=p.trial_id, member=p.member, parent_commit=p.parent, commit=p.sha,
                   source=self.archive.source(p.sha), proposer=p.proposer, message=p.message)

    def record(self, row: dict, src_hash: str | None = None, curve=None) -> None:
        """A recorded trial into the journal's order and the population state."""
        line = self.journaled({"event": "recorded", "trial_id": row["trial_id"], "curve": curve})
        h = row.get("source_hash") or src_hash or record_hash(self.archive, row)
        self.state.apply(Recorded(row, h, line["curve"]))
        if len(self.state.recorded) % self.snapshot_every == 0:
            self.save_snapshot()

    def save_snapshot(self) -> None:
        """The state as of the journal's end, for the next replay (taken where state and journal agree)."""
        state_snapshot.write(self.archive_dir, self.state, self.journal.size())

    def save_work(self, job: Job, slot: dict, waiting: bool, wanted: int = 0) -> None:
        """A trial not judged yet, as a resume must find it: journaled, then in the state."""
        head_hash = job.hash if job.proposer == REFERENCE else ""
        line = self.journaled({"event": "run", "trial_id": job.trial_id,
                               "work": work_of(job, slot, waiting, head_hash, wanted)})
        self.state.apply(RunSaved(line["work"]))

    def decide_undecided(self) -> None:
        """Candidates a resume found parked: judged again now (parked again if their reference still runs)."""
        waiting, self.undecided = self.undecided, []
        for job, last, slot in waiting:
            self.decide(job, last, slot, last.get("device") or slot.get("device_name", ""))

    # ---- actors -------------------------------------------------------------------------
    def start_actors(self, ray) -> None:
        from trainer.actor import remote_worker_class
        cfg = self.cfg
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_cuda = cfg.resources.device == "cuda" or (cfg.resources.device == "auto" and gpus > 0)
        if cfg.resources.device == "cuda" and gpus == 0:
            raise RuntimeError("resources.device is cuda but the Ray cluster has no GPU")
        spare = True
        if use_cuda:
            n, cls = gpus, remote_worker_class(ray, num_gpus=1, num_cpus=1)
        else:
            n, spare = budget_rules.cpu_slots(cfg.resources.cpu_slots, int(resources.get("CPU", 1)),
                                              cfg.resources.threads_per_trial)
            cls = remote_worker_class(ray, num_gpus=0, num_cpus=cfg.resources.threads_per_trial)
        device = "cuda" if use_cuda else "cpu"
        self.new_actor = lambda i: cls.remote(f"{device}{i}", device, asdict(cfg.data), cfg.resources.threads_per_trial)
        self.actors = [self.new_actor(i) for i in range(n)]
        infos = ray.get([a.info.remote() for a in self.actors])
        self.data_dirs = ray.get([a.ensure_data.remote() for a in self.actors])
        self.kinds = budget_rules.kind_speeds(infos)
        self.ref_speed = budget_rules.reference_speed(cfg.budget.reference_speed, [i["speed"] for i in infos])
        self.spare = spare
        for info in infos:
            self.place(info)
        self.slots = infos
        self.actor_load = {i: 0 for i in range(n)}
        for i in infos:
            self.say(f"actor {i['slot']} on {i['node']}: {i['device_name']} measured {i['measured_speed']:.3g}, kind speed {i['speed']:.3g}, "
                     f"budget x{i['budget_factor']:.3f} = {cfg.budget.seconds * i['budget_factor']:.1f}s")

    def place(self, info: dict) -> None:
        """An actor's info, completed with its kind's speed and its budget factor."""
        info["measured_speed"] = info["speed"]
        info["speed"] = self.kinds.setdefault(info["device_name"], info["speed"])
        info["budget_factor"] = budget_rules.budget_factor(self.ref_speed, info["speed"])
        info["spare_core"] = self.spare

    # ---- lost actors and nodes ----------------------------------------------------------
    def actor_lost(self, ray, i: int, job: Job, exc: Exception) -> None:
        """An actor died under a trial: a lost cluster stops the run; a lost node's trial goes to another actor
        and a replacement actor is asked for (Ray places it wherever resources are, the node back included)."""
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if not cluster_alive(ray):
            self.ready.appendleft(job)
            raise ClusterLost(f"the Ray cluster is gone ({reason})")
        if i not in self.lost:
            self.lost.add(i)
            self.say(f"  actor {self.slots[i]['slot']} on {self.slots[i]['node']} was lost; asking Ray for a "
                     f"replacement")
            forget_actor(ray, self.actors[i])
            actor = self.new_actor(i)
            self.replacing[actor.info.remote()] = (i, actor)
        self.infra_failure(job, reason)

    def revive(self, ray) -> None:
        """Replacement actors that Ray has placed take their slot again (after their node prepared the data)."""
        if not self.replacing:
            return
        done, _ = ray.wait(list(self.replacing), num_returns=len(self.replacing), timeout=0)
        for ref in done:
            i, actor = self.replacing.pop(ref)
            try:
                info = ray.get(ref)
                data_dir = ray.get(actor.ensure_data.remote())
            except Exception:
                if not cluster_alive(ray):
                    raise ClusterLost("the Ray cluster is gone (a replacement actor was lost)") from None
                actor = self.new_actor(i)
                self.replacing[actor.info.remote()] = (i, actor)
                continue
            self.place(info)
            self.actors[i], self.slots[i], self.data_dirs[i] = actor, info, data_dir
            self.actor_load[i] = 0
            self.lost.discard(i)
            self.say(f"  actor {info['slot']} is back on {info['node']}")

    # ---- proposals ----------------------------------------------------------------------
    def new_trial_id(self, member: str = "", proposer: str = "") -> str:
        tid = f"t{self.state.next_id:05d}"
        self.state.apply(Proposed(tid, member, proposer))
        return tid

    def enqueue(self, proposal: Proposal) -> Job | None:
        """Queue a proposal as a pending trial; one the static check refuses is recorded as rejected (None)."""
        tid = self.new_trial_id(proposal.member, proposal.proposer)
        problem = static_problem(proposal.source, proposal.proposer)
        if problem:
            row = self.archive.reject(proposal.member, proposal.parent_commit, tid, proposal.proposer,
                                      proposal.message, problem, source=proposal.source)
            self.rejected(row, source_hash(proposal.source))
            return None
        sha = self.archive.add_pending(proposal.member, proposal.parent_commit, proposal.source,
                                       proposal.message, tid, proposal.proposer)
        job = Job(trial_id=tid, member=proposal.member, parent_commit=proposal.parent_commit, commit=sha,
                  source=proposal.source, proposer=proposal.proposer, message=proposal.message,
                  cost={k: v for k, v in proposal.extra.items() if k in COST_COLUMNS})
        self.ready.append(job)
        return job

    def seed_baseline(self) -> None:
        """A new population first measures the seed: its score and the noise floor (several seeds)."""
        if self.finished or self.ready or self.in_flight:
            return
        heads = self.archive.heads()
        first = sorted(heads)[0]
        src = self.archive.source(heads[first])
        for k in range(self.cfg.selection.noise_seeds):
            self.enqueue(Proposal(member=first, parent_commit=heads[first], source=src, proposer=BASELINE,
                                  message=f"baseline run {k + 1}/{self.cfg.selection.noise_seeds} of the seed"))

    def budget_left(self) -> int:
        if not self.cfg.stop.max_trials:
            return 1 << 30
        parked = sum(len(v) for v in self.parked.values()) + len(self.before_baseline) + len(self.undecided)
        return self.cfg.stop.max_trials - self.finished - len(self.in_flight) - len(self.ready) - parked

    def fill_queue(self) -> None:
        depth = self.cfg.proposers.queue_depth or 2 * len(self.actors)
        self.scan_inbox()
        while len(self.ready) < depth and self.budget_left() - len(self.agent_refs) > 0:
            proposal = self.propose()
            if proposal is None:
                break
            self.enqueue(proposal)

    def baseline_ready(self) -> bool:
        return any(self.baseline.values())

    def baseline_pending(self) -> bool:
        """Seed runs still queued or running: candidates that finish first wait for the seed's score."""
        jobs = list(self.ready) + [job for job, _ in self.in_flight.values()]
        return any(job.proposer == BASELINE for job in jobs)

    def busy_members(self) -> dict[str, int]:
        busy: dict[str, int] = {}
        jobs = [job for job, _ in self.in_flight.values()] + list(self.ready)
        jobs += [{"member": m} for m, _, _ in self.agent_refs.values()]
        for job in jobs:
            name = job["member"] if isinstance(job, dict) else job.member
            busy[name] = busy.get(name, 0) + 1
        return busy

    def propose(self) -> Proposal | None:
        """The next candidate from the built-in mutator; starts an agent instead when the dice say so."""
        cfg = self.cfg.proposers
        available = ["mutate"] if cfg.weights.get("mutate", 0) > 0 else []
        if self.running("agent") < cfg.agent_concurrency:
            available.append("agent")
        if self.running("endpoint") < cfg.endpoint.concurrency:
            available.append("endpoint")
        attempt = self.picks[1] + 1 if self.picks[0] == self.state.next_id else 0
        self.picks = (self.state.next_id, attempt)
        rng = pick_rng(self.state, attempt)
        name = selection.pick_proposer({k: v for k, v in cfg.weights.items() if k != "inbox"}, rng, available)
        member = selection.pick_member(self.states_alive(), rng, in_flight=self.busy_members())
        if name in ("agent", "endpoint"):
            self.start_agent(member, name)
            return None
        idle = sum(1 for load in self.actor_load.values() if load == 0)
        if name is None and (self.ready or idle == 0):
            return None
        # mutate, or (no proposer free and a device would idle) mutate to keep the device busy
        parent = self.archive.heads()[member]
        bounds = {"SEQ_LEN": (max(8, self.cfg.judge.seq_len // 4), 16384)}
        new_src, message = mutate.propose(self.archive.source(parent), mutation_rng(self.state, member),
                                          cfg.mutate_changes, bounds=bounds)
        if name is None:
            message += " (filling in for busy agents)"
        return Proposal(member=member, parent_commit=parent, source=new_src, proposer="mutate", message=message)

    def states_alive(self) -> dict:
        return self.state.alive()

    def running(self, proposer: str) -> int:
        return sum(1 for _, _, name in self.agent_refs.values() if name == proposer)

    def start_agent(self, member: str, proposer: str = "agent") -> None:
        """A Ray task proposing for `member`: the configured coding agent, or the LLM endpoint."""
        import ray
        from orchestrator.proposers.agent import command_for, run_agent_on_commit
        from orchestrator.proposers.endpoint import run_endpoint
        from orchestrator.proposers.history import format_history
        cfg = self.cfg.proposers
        parent = self.archive.heads()[member]
        history = format_history(self.history_inputs(member))
        brief = full_brief(self.cfg, self.archive.source(parent))
        if proposer == "endpoint":
            task = ray.remote(num_cpus=0, max_retries=0)(run_endpoint)
            ref = task.remote(asdict(cfg.endpoint), brief, history, self.archive.source(parent))
            limit = cfg.endpoint.concurrency
        else:
            task = ray.remote(num_cpus=0, max_retries=0)(run_agent_on_commit)
            ref = task.remote(str(self.archive_dir), parent, command_for(cfg.agent, cfg.agent_command), brief,
                              history, cfg.agent_timeout, member=member)
            limit = cfg.agent_concurrency
        self.agent_refs[ref] = (member, parent, proposer)
        self.say(f"  {proposer} started on {member} ({self.running(proposer)}/{limit} running)")

    def history_inputs(self, member: str):
        """What history.md tells an agent about `member`: head, noise, rule, trials, in flight, best others, and an
        adopted project's own history."""
        from orchestrator.adopt import history_lines
        from orchestrator.proposers.history import TRIALS_SHOWN, HistoryInputs, unified_diff
        heads = self.archive.heads()
        head_src = self.archive.source(heads[member])
        head_hash = source_hash(head_src)
        trials = self.archive.history(member)
        for i in range(max(0, len(trials) - TRIALS_SHOWN), len(trials)):     # diffs only for the rows shown
            row = trials[i]
            parent = self.archive.source(row["parent_commit"]) if row.get("parent_commit") else ""
            trials[i] = {**row, "diff": unified_diff(parent, self.archive.source(row["commit"]))}
        jobs = [j for j, _ in self.in_flight.values()] + list(self.ready)
        jobs += [j for waiting in self.parked.values() for j, _, _ in waiting] + [j for j, _, _ in self.before_baseline]
        flight = [{"trial_id": j.trial_id, "proposer": j.proposer, "message": j.message,
                   "diff": unified_diff(head_src, j.source)} for j in jobs
                  if j.member == member and j.proposer not in (BASELINE, REFERENCE)]
        flight += [{"proposer": name, "message": f"a {name} proposal is being written"}
                   for m, _, name in self.agent_refs.values() if m == member]
        others = sorted((st.head_score, name) for name, st in self.states_alive().items()
                        if name != member and st.head_score is not None)
        return HistoryInputs(
            member=member, head_score=self.states[member].head_score,
            head_runs={d: self.scores.runs(head_hash, d) for d in self.scores.judged_kinds(head_hash)},
            noise=dict(self.baseline), margins=self.margins_now(head_hash), rule=rule_text(self.cfg.selection),
            trials=trials, in_flight=flight,
            others=[{"member": name, "head_score": score,
                     "diff": unified_diff(head_src, self.archive.source(heads[name]))} for score, name in others],
            imported=history_lines(self.archive.imported()))

    def margins_now(self, head_hash: str) -> dict:
        """{device kind: how far below the head one run must land to be promoted}, from the pooled σ (at its
        dof), the head's weight there and the fitted prior; kinds without a σ yet are left out."""
        return margins(self.scores, head_hash, rule_of(self.cfg.selection))

    def harvest_agents(self, ray) -> None:
        if not self.agent_refs:
            return
        done, _ = ray.wait(list(self.agent_refs), num_returns=len(self.agent_refs), timeout=0)
        for ref in done:
            member, parent, proposer = self.agent_refs.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as exc:
                self.say(f"  {proposer} task on {member} was lost: {exc}")
                continue
            if member not in self.state.head_hash:
                continue
            cost = {k: v for k, v in outcome.usage.items() if k in COST_COLUMNS}
            if outcome.status == "ok":
                self.enqueue(Proposal(member=member, parent_commit=parent, source=outcome.source, proposer=proposer,
                                      message=outcome.message or f"{proposer} edit", extra=cost))
            else:
                row = self.archive.reject(member, parent, self.new_trial_id(member, proposer), proposer,
                                          outcome.message or f"{proposer} proposal",
                                          f"{proposer} {outcome.status}: {outcome.reason}"[:500], source=outcome.source,
                                          row={**cost, "agent_log": outcome.log_tail[-4000:]})
                self.rejected(row)

    def rejected(self, row: dict, src_hash: str | None = None, cull: bool = True) -> None:
        """A proposal recorded as rejected without running: a finished trial, and a trial of its member."""
        self.record(row, src_hash)
        self.board.finished(row)
        if cull:
            self.maybe_cull()

    def scan_inbox(self) -> None:
        from orchestrator.proposers.inbox import scan_inbox
        now = time.time()
        if now - self.last_inbox < INBOX_EVERY:
            return
        self.last_inbox = now
        patch_dir = self.cfg.proposers.inbox_dir or None
        found = scan_inbox(self.archive, patch_dir, new_trial_id=self.new_trial_id, on_reject=self.say,
                           on_recorded=lambda row: self.rejected(row, cull=False))
        for prop in found:
            problem = static_problem(prop.source, "inbox") if prop.trial_id else ""
            if problem:                        # a ref already pending in the archive, refused before it runs
                self.rejected(self.archive.finish(prop.trial_id, {"status": "invalid", "verdict": "rejected",
                                                                  "reason": problem, "finished_at": time.time()}),
                              source_hash(prop.source))
            elif prop.trial_id:                # a ref: already pending in the archive
                self.ready.append(Job(trial_id=prop.trial_id, member=prop.member,
                                      parent_commit=prop.parent_commit, commit=prop.extra["pending_commit"],
                                      source=prop.source, proposer="inbox", message=prop.message))
            else:
                self.enqueue(Proposal(member=prop.member, parent_commit=prop.parent_commit, source=prop.source,
                                      proposer="inbox", message=prop.message))
        self.maybe_cull()                     # after the scan: its proposals name members alive during it

    # ---- dispatch and harvest -----------------------------------------------------------
    def dispatch(self) -> None:
        overlap = budget_rules.overlap_on(self.cfg.resources.overlap, self.slots[0] if self.slots else {})
        per_actor = 3 if overlap else 1           # one judged, one training, one starting up
        while self.ready:
            picked = self.next_dispatch(per_actor)
            if picked is None:
                return
            job, i = picked
            slot = self.slots[i]
            if self.try_reuse(job, slot):
                continue
            device = slot["device_name"]
            startup = budget_rules.startup_allowance(self.scores.startups.get(device, []),
                                                     self.cfg.budget.startup_floor)
            if self.cfg.budget.startup_allowance > 0:
                startup = self.cfg.budget.startup_allowance
            head_hash = source_hash(self.archive.source(job.parent_commit)) if job.parent_commit else ""
            curve = self.scores.curves.get((head_hash, device)) if self.cfg.selection.early_stop_margin else None
            spec = budget_rules.trial_spec(self.cfg, job, slot, self.data_dirs[i], job.next_seed(), startup, curve,
                                           self.operator_env)
            ref = self.actors[i].run.remote(spec.to_dict(), {"member": job.member, "proposer": job.proposer})
            self.in_flight[ref] = (job, i)
            self.actor_load[i] += 1

    def next_dispatch(self, per_actor: int):
        """(job, actor index): the first ready job with a free actor of the right device kind."""
        free = sorted((load, i) for i, load in self.actor_load.items() if load < per_actor and i not in self.lost)
        for job in list(self.ready):
            for _, i in free:
                if not job.device_kind or self.slots[i]["device_name"] == job.device_kind:
                    self.ready.remove(job)
                    return job, i
        return None

    def try_reuse(self, job: Job, slot: dict) -> bool:
        """A byte-identical candidate already judged is not trained again: the earlier result on this slot's
        device kind is reused, else the one on any other kind."""
        if job.proposer in (BASELINE, REFERENCE) or job.runs:       # a head re-run is meant to train again
            return False
        judged = [d for d in self.scores.judged_kinds(job.hash) if of_current_segment(d)]
        if not judged:
            return False
        device = slot["device_name"] if slot["device_name"] in judged else judged[0]
        key = (job.hash, device)
        earlier = self.scores.trial_of[key]
        score = self.scores.mean(job.hash, device)
        result = {"status": "ok" if score is not None else "crash", "device": device, "val_bpb": score,
                  "reason": f"byte-identical to {earlier}: result reused, not trained again"}
        job.runs.append(result)
        verdict = {"kind": "discard", "decided_by": f"repeat of {earlier} (proposer repeated itself)", "runs": 0}
        its_slot = next((s for s in self.slots if s["device_name"] == device), slot)
        self.finish_job(job, result, verdict, its_slot, reused_from=earlier)
        return True

    def harvest(self, ray) -> None:
        if not self.in_flight:
            return
        done, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=POLL_SECONDS)
        for ref in done:
            job, i = self.in_flight.pop(ref)
            self.actor_load[i] -= 1
            try:
                result = ray.get(ref)
            except Exception as exc:         # actor, node or cluster died: not the candidate's fault
                self.actor_lost(ray, i, job, exc)
                continue
            if result.get("status") == "infra":
                self.infra_failure(job, result.get("reason", ""))
                continue
            result["slot"] = self.slots[i]["slot"]
            self.on_result(job, result, self.slots[i])

    def infra_failure(self, job: Job, reason: str) -> None:
        """Dispatch again, up to max_retries; then shelve it: it stays pending (never recorded, never counted
        toward max_trials) and the next resume dispatches it again."""
        job.infra_failures += 1
        job.attempt += 1
        if job.attempt <= self.cfg.resources.max_retries:
            self.say(f"  {job.trial_id} lost to an infrastructure failure ({reason}); dispatching again")
            self.ready.appendleft(job)
            return
        self.shelved.append(job)
        self.say(f"  {job.trial_id} lost to infrastructure {job.attempt} times ({reason}); kept pending for resume")
        if job.proposer == REFERENCE:
            self.resume_parked(job, job.device_kind)

    def on_result(self, job: Job, result: dict, slot: dict) -> None:
        job.runs.append(result)
        device = result.get("device") or slot["device_name"]
        job.device_kind = job.device_kind or device      # every run of a trial on one device kind, as recorded
        if job.proposer == BASELINE:
            self.on_baseline(job, result, slot, device)
            return
        if job.proposer == REFERENCE:
            self.on_reference(job, result, slot, device)
            return
        self.decide(job, result, slot, device)

    def decide(self, job: Job, result: dict, slot: dict, device: str) -> None:
        """The verdict on a candidate's latest run (population_state.next_step), carried out."""
        step = next_step(self.state, job, self.cfg.selection, device, self.baseline_pending(), self.referencing,
                         lambda: self.archive.source(job.parent_commit))
        if step.action == WAIT_BASELINE:
            self.before_baseline.append((job, result, slot))
            self.save_work(job, slot, waiting=True)
        elif step.action == ASK_REFERENCE:
            self.ask_reference(job, self.archive.heads()[job.member], step.key, slot, step.short, step.wanted)
        elif step.action == RUN_AGAIN:                  # another run with the next seed of this trial
            self.say(f"  {job.trial_id} {job.member} val_bpb {result['val_bpb']:.4f}: {step.verdict['decided_by']}")
            self.ready.appendleft(job)
            self.save_work(job, slot, waiting=False)
        else:
            self.finish_job(job, result, step.verdict, slot)

    def ask_reference(self, job: Job, head: str, key: tuple, slot: dict, runs: int, wanted: int) -> None:
        """Park the candidate; unless some are on their way, run its member head on the candidate's device
        kind first (`runs` times, to `wanted` runs there)."""
        self.parked.setdefault(key, []).append((job, job.runs[-1], slot))
        self.save_work(job, slot, waiting=True)
        if key in self.referencing:
            return
        self.referencing.add(key)
        ref = self.enqueue(Proposal(member=job.member, parent_commit=head, source=self.archive.source(head),
                                    proposer=REFERENCE, message=f"{runs} run(s) of {job.member}'s head on "
                                                                f"{key[1]} for a same-device comparison"))
        ref.device_kind, ref.want_runs = key[1], runs
        self.save_work(ref, {}, waiting=False, wanted=wanted)
        self.ready.remove(ref)
        self.ready.appendleft(ref)
        self.say(f"  {job.trial_id} waits for {ref.trial_id}: {runs} more run(s) of {job.member}'s head on {key[1]}")

    def on_reference(self, job: Job, result: dict, slot: dict, device: str) -> None:
        if result.get("status") == "ok" and len(job.runs) < job.want_runs:
            self.ready.appendleft(job)                  # the head's next run, with the next seed
            self.save_work(job, slot, waiting=False)
            return
        verdict = {"kind": "reference", "decided_by": f"{len(job.runs)} head run(s) on {device} for a "
                                                      f"same-device comparison", "runs": len(job.runs)}
        self.finish_job(job, result, verdict, slot)
        self.resume_parked(job, device)

    def resume_parked(self, ref: Job, device: str) -> None:
        """A head's reference runs are done (or lost): decide the candidates parked on that device kind. A
        decision can reach this again (its record triggers a cull, which stops a retired member's reference):
        a key that nested call took is done."""
        self.referencing.discard((ref.hash, ref.device_kind or device))
        for key in [k for k in self.parked if k[1] == device]:
            for parked, last, its_slot in self.parked.pop(key, []):
                self.decide(parked, last, its_slot, device)

    def on_baseline(self, job: Job, result: dict, slot: dict, device: str) -> None:
        verdict = {"kind": "baseline", "decided_by": "seed run for the noise floor", "runs": 1}
        self.finish_job(job, result, verdict, slot)
        if not self.baseline_pending():
            waiting, self.before_baseline = self.before_baseline, []
            for parked, last, its_slot in waiting:
                self.decide(parked, last, its_slot, last.get("device") or its_slot["device_name"])

    def finish_job(self, job: Job, result: dict, verdict: dict, slot: dict, reused_from: str = "") -> None:
        row = ledger_row(job, result, verdict, slot, reused_from)
        promote = verdict["kind"] == "promote"
        head = self.archive.heads().get(job.member)
        row = self.archive.finish(job.trial_id, row, promote, expect_head=head if promote else None)
        self.record(row, job.hash, self.curve_to_keep(job, row, reused_from))
        self.board.finished(row)
        self.maybe_cull()

    def curve_to_keep(self, job: Job, row: dict, reused_from: str):
        """The loss curve a record keeps for early stopping (selection.early_stop_margin): the first of a source
        on a device kind; None otherwise, so the journal stays small."""
        known = (job.hash, row.get("device")) in self.scores.curves
        if not self.cfg.selection.early_stop_margin or reused_from or known:
            return None
        curves = [r["loss_curve"] for r in job.runs if r.get("status") == "ok" and r.get("loss_curve")]
        return curves[0] if curves else None

    def maybe_cull(self) -> None:
        sel = self.cfg.selection
        if self.culling or not selection.due_for_culling(self.candidates_finished, sel.cull_every):
            return
        self.culling = True
        try:
            self.cull()
        finally:
            self.culling = False

    def cull(self) -> None:
        """Retire the stale bottom members and fork top ones in their place, busy or not: queued candidates of a
        retired member are stopped, parked ones discarded with their runs, running ones when their run ends."""
        sel = self.cfg.selection
        plan = cull_plan(self.state, sel.cull_fraction, sel.patience)
        if not plan:
            return
        for retire, fork_from, new_name in plan:
            self.archive.fork(new_name, fork_from)
            self.archive.retire(retire)
            self.say(f"cull: retired {retire}, forked {new_name} from {fork_from}")
        line = self.journaled({"event": "cull", "plan": plan})
        self.state.apply(Culled(tuple(tuple(p) for p in line["plan"])))
        for retire, _, _ in plan:
            self.stop_work_of(retire)

    def stop_work_of(self, member: str) -> None:
        """A retired member's candidates: queued ones recorded as stopped, parked ones as discarded (with their
        runs); seed and reference runs go on (other members' candidates may wait for them)."""
        queued = [j for j in self.ready if j.member == member and j.proposer not in (BASELINE, REFERENCE)]
        for job in sorted(queued, key=lambda j: j.trial_id):          # recorded in one order, however queued
            self.ready.remove(job)
            result = {"status": "stopped", "reason": f"member {member} was retired before this candidate ran"}
            job.runs.append(result)
            self.finish_job(job, result, {"kind": "discard", "decided_by": "member retired",
                                          "runs": len(job.runs) - 1}, {})
        waiting = []
        for key in list(self.parked):
            waiting += [entry for entry in self.parked[key] if entry[0].member == member]
            self.parked[key] = [entry for entry in self.parked[key] if entry[0].member != member]
            if not self.parked[key]:
                del self.parked[key]
        waiting += [entry for entry in self.before_baseline if entry[0].member == member]
        self.before_baseline = [entry for entry in self.before_baseline if entry[0].member != member]
        for job, last, slot in sorted(waiting, key=lambda entry: entry[0].trial_id):
            self.finish_job(job, last, {"kind": "discard", "decided_by": f"member {member} was retired",
                                        "runs": len(job.runs)}, slot)

    # ---- the loop -----------------------------------------------------------------------
    def should_stop(self) -> bool:
        stop = self.cfg.stop
        if stop.max_trials and self.finished >= stop.max_trials:
            return True
        if stop.max_wall_seconds and time.time() - self.t_start >= stop.max_wall_seconds:
            return True
        return False

    def loop(self, ray) -> None:
        self.decide_undecided()
        while True:
            if self.should_stop():
                if not self.in_flight:
                    break
            else:
                self.seed_baseline()
                self.fill_queue()
                self.dispatch()
            if not self.in_flight and not self.ready and not self.agent_refs:
                if not self.baseline_ready() and self.finished and not self.should_stop():
                    self.say("the seed train.py produced no score, so no candidate can be judged: see the "
                             "reasons of the baseline rows (`popsearch status ARCHIVE`, the ledger)")
                    break
                if self.should_stop():
                    break
            self.harvest(ray)
            self.harvest_agents(ray)
            self.revive(ray)
            alive = [i for i in range(len(self.actors)) if i not in self.lost]
            self.board.tick(ray, [self.actors[i] for i in alive], [self.slots[i] for i in alive])
        self.save_snapshot()

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def checked_operator_settings() -> dict:
    """The operator settings of this process's environment that every trial and judge gets (README: operator
    settings); a bad one is a config error, reported before anything starts."""
    from trainer.trial_env import operator_env
    try:
        return operator_env()
    except ValueError as exc:
        raise ConfigError(f"environment: {exc}") from None


def rule_text(sel) -> str:
    """The verdict rule in words, for history.md (the numbers come from the driver's margins)."""
    return (f"After each run, your mean is compared with the head's score on the same device kind (sigma pooled "
            f"over every repeated run): the gap and the prior over edit effects that this population's own "
            f"verdicts show (most edits do nothing or harm) give P(your edit is a win). P >= {sel.promote_at:g} "
            f"promotes, P <= {sel.discard_at:g} discards, in between it runs again (at most {sel.max_runs} runs). "
            f"A promoted head is scored by its posterior, which corrects for the luck that selected it. Seed-only "
            f"changes are never promoted. The margin below is how far under the head ONE run must land to "
            f"promote.")


def static_problem(source: str, proposer: str) -> str:
    """Why the static check refuses a candidate ('' when it passes); the seed and head re-runs are not checked
    (the operator chose the seed; a head passed when it was proposed)."""
    if proposer in (BASELINE, REFERENCE):
        return ""
    from trainer.static_check import check_source
    problems = check_source(source)
    return ("static check: " + "; ".join(problems))[:500] if problems else ""


def cluster_alive(ray, timeout: float = CLUSTER_PROBE_SECONDS) -> bool:
    """Whether the cluster's control store answers within `timeout` and names at least one live node."""
    answer: list = []

    def probe() -> None:
        try:
            answer.append(any(node.get("Alive") for node in ray.nodes()))
        except Exception:
            answer.append(False)
    thread = threading.Thread(target=probe, name="popsearch-cluster-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def forget_actor(ray, actor) -> None:
    """Keep Ray from restarting a lost actor itself (its class has max_restarts): its replacement alone may
    take the slot's resources when a node is back, else the restarted one could hold them with no work."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:
        pass


def save_config(cfg: Config, archive_dir: Path) -> None:
    import yaml
    path = archive_dir / "config.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def connect_ray(cfg: Config):
    """Join the cluster named by RAY_ADDRESS, or start a local one sized for this machine. ray.init replaces
    the SIGTERM handler with a bare exit; the caller's handler is put back, so SIGTERM ends a run as SIGINT does."""
    import signal

    import ray
    if ray.is_initialized():
        return ray
    env = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    callers = signal.getsignal(signal.SIGTERM)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, runtime_env={"env_vars": env})
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": env})
    if callers is not None:
        signal.signal(signal.SIGTERM, callers)
    return ray


def run(cfg: Config, out=sys.stdout) -> Path:
    """Run (or resume) the population described by cfg until a stop rule fires; returns the archive dir."""
    import ray as ray_module
    joined_before = ray_module.is_initialized()     # a Ray the caller started is the caller's to stop
    driver = Driver(cfg, out)
    driver.open_archive()
    ray = None
    try:
        driver.rebuild()
        ray = connect_ray(cfg)
        driver.board = LiveBoard(out)
        driver.start_actors(ray)
        driver.loop(ray)
        driver.board.close()
        shelved = f"; {len(driver.shelved)} lost to infrastructure, kept pending for resume" if driver.shelved else ""
        driver.say(f"done: {driver.finished} trials in the archive {driver.archive_dir}{shelved}")
    finally:
        driver.close()
        if ray is not None and not joined_before:
            stop_ray(ray)
    return driver.archive_dir


def stop_ray(ray) -> None:
    """Disconnect from Ray (a local Ray started by this driver stops with it); a cluster already gone is fine."""
    try:
        ray.shutdown()
    except Exception:
        pass
