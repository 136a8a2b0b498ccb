"""The population state rebuilt from an archive: its records and journal turned into the state machine's events.

Record by record through PopulationState.apply, the path the live driver takes; readers (status, report) call
replay(archive) for the same numbers the driver decides with. Uses only the Archive's public methods."""
from __future__ import annotations

from orchestrator import journal, state_snapshot
from orchestrator.fingerprint import source_hash
from orchestrator.population import trial_number
from orchestrator.population_state import (Culled, HeadsSeen, PopulationState, Proposed, Recorded, RunSaved,
                                           Started)


def record_hash(archive, row: dict) -> str:
    """A record's train.py identity: its source_hash column, else read from its commit."""
    return row.get("source_hash") or source_hash(archive.source(row["commit"]))


def replay(archive, seed: int = 0, segment: int = 0, records: list[dict] | None = None,
           use_snapshot: bool = True) -> PopulationState:
    """The state a driver had after the last event the archive and its journal hold; `segment`: the current
    score segment (config_change.py), whose runs alone are compared; `records`: archive.trial_records() when
    the caller has read them already. From the driver's last state snapshot (state_snapshot.py) and what
    came after it when there is a usable one; from the first event otherwise (or with use_snapshot=False)."""
    return replay_from(archive, last_snapshot(archive, seed, segment) if use_snapshot else None, seed, segment,
                       records)


def last_snapshot(archive, seed: int, segment: int) -> state_snapshot.Snapshot | None:
    """The driver's last state snapshot, if it fits this archive, seed and segment (state_snapshot.read)."""
    return state_snapshot.read(archive.path, seed, segment, journal.journal_path(archive.path))


def replay_from(archive, found: state_snapshot.Snapshot | None, seed: int, segment: int,
                records: list[dict] | None = None) -> PopulationState:
    """replay() from a snapshot already read (None: from the first event)."""
    if found is None:
        state, events = PopulationState(seed=seed, segment=segment), archive_events(archive, records)
    else:
        state, events = found.state, events_after(archive, found, records)
    for event in events:
        state.apply(event)
    return state


def events_after(archive, snap: state_snapshot.Snapshot, records: list[dict] | None = None):
    """The events after a snapshot, in the order the live driver applied them: the ids taken since (ids are
    taken in order, so those below the snapshot's next id are in it already), the journal's later lines,
    judged trials that neither holds (a kill between a record and its line), then the heads."""
    state, taken = snap.state, snap.state.next_id       # read now: applying the events below moves next_id
    lines = journal.read(archive.path, snap.journal_bytes)
    journaled = {line["trial_id"] for line in lines if line["event"] == "recorded"}
    loose = set(archive.judged_ids()) - state.recorded - journaled
    wanted = journaled | loose
    rows = ([r for r in records if r["trial_id"] in wanted] if records is not None
            else archive.records_of(wanted))
    yield from proposals(rows, archive.pending(), taken)
    yield from journal_events(archive, lines, {r["trial_id"]: r for r in rows})
    yield from (Recorded(r, record_hash(archive, r)) for r in rows if r["trial_id"] in loose)
    yield heads_seen(archive)


def proposals(rows: list[dict], pending: list, taken: int | None = None):
    """Proposed for each record, then each pending trial (only ids numbered `taken` or above, when given)."""
    for r in rows:
        if taken is None or trial_number(r["trial_id"]) >= taken:
            yield Proposed(r["trial_id"], r.get("member") or "", r.get("proposer") or "")
    for p in pending:
        if taken is None or trial_number(p.trial_id) >= taken:
            yield Proposed(p.trial_id, p.member, p.proposer)


def journal_events(archive, lines: list[dict], by_id: dict):
    """The journal's run, recorded (of the rows in by_id) and cull lines as events, in journal order."""
    for line in lines:
        if line["event"] == "run":
            yield RunSaved(line["work"])
        elif line["event"] == "recorded" and line["trial_id"] in by_id:
            row = by_id[line["trial_id"]]
            yield Recorded(row, record_hash(archive, row), line.get("curve"))
        elif line["event"] == "cull":
            yield Culled(tuple(tuple(p) for p in line["plan"]))


def heads_seen(archive) -> HeadsSeen:
    return HeadsSeen(tuple((m, source_hash(archive.source(sha))) for m, sha in sorted(archive.heads().items())))


def archive_events(archive, records: list[dict] | None = None):
    """The events, in the order the live driver applied them: journal order; records the journal lacks come
    first in an archive older than the journal, last otherwise (a kill between a record and its line)."""
    lines = journal.read(archive.path)
    records = archive.trial_records() if records is None else records
    by_id = {r["trial_id"]: r for r in records}
    started = next((line for line in lines if line["event"] == "started"), None)
    yield Started(tuple(tuple(pair) for pair in started["heads"])) if started else _old_start(archive, records)
    yield from proposals(records, archive.pending())
    journaled = {line["trial_id"] for line in lines if line["event"] == "recorded"}
    loose = [r for r in records if r["trial_id"] not in journaled]
    if not started:
        yield from (Recorded(r, record_hash(archive, r)) for r in loose)
    yield from journal_events(archive, lines, by_id)
    if started:
        yield from (Recorded(r, record_hash(archive, r)) for r in loose)
    yield heads_seen(archive)


def _old_start(archive, records) -> Started:
    """An archive without a journal: every member it ever had starts at the seed (the parent of its first
    trial, else the first member's tip); HeadsSeen puts the living heads right at the end."""
    trials = sorted(records, key=lambda r: trial_number(r["trial_id"]))
    seed_commit = trials[0]["parent_commit"] if trials and trials[0].get("parent_commit") else None
    names = [entry.member for entry in archive.lineage()] or sorted(archive.heads())
    seed_commit = seed_commit or archive.tip(names[0])
    h = source_hash(archive.source(seed_commit))
    return Started(tuple((name, h) for name in names))
