"""ARCHIVE/state.json: the population state as the driver had it at one point of its journal, so that resume and
status replay only the journal lines (and records) after that point instead of every one since the start.

A cache, never the truth: written atomically by the driver every SNAPSHOT_EVERY records and when it stops; a
snapshot that is missing, unreadable, of another format, seed or score segment, or that does not end on a line
of today's journal is ignored and the whole journal is replayed. Pure JSON; no git, torch or Ray."""
from __future__ import annotations

import gc
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.population import Scores
from orchestrator.population_state import PopulationState
from orchestrator.selection import MemberState

SNAPSHOT_FILE = "state.json"
SNAPSHOT_FORMAT = 1
SNAPSHOT_EVERY = 1000            # recorded trials between two snapshots the driver writes


@dataclass(frozen=True)
class Snapshot:
    """A state and the journal position it holds everything before (bytes of journal.jsonl)."""
    state: PopulationState
    journal_bytes: int


def snapshot_path(archive_dir) -> Path:
    return Path(archive_dir) / SNAPSHOT_FILE


def _pairs(mapping: dict) -> list:
    return [[list(key), value] for key, value in mapping.items()]


def _unpairs(pairs: list) -> dict:
    return {tuple(key): value for key, value in pairs}


def encode_scores(scores: Scores) -> dict:
    """The scores with one entry per (source, device kind): [hash, device, first trial, scoring runs, [[budget,
    every ok run], ...], curve] (Scores keys its five dicts by the same pairs; kinds follows from them)."""
    entries = {key: [trial_id, None, [], None] for key, trial_id in scores.trial_of.items()}
    for key, runs in scores.by_source.items():
        entries[key][1] = runs
    for (h, device, budget), runs in scores.repeats.items():
        entries[(h, device)][2].append([budget, runs])
    for key, curve in scores.curves.items():
        entries[key][3] = curve
    return {"sources": [[h, device, *entry] for (h, device), entry in entries.items()],
            "startups": scores.startups,
            "repeated": [[list(key), [list(at) for at in keys]] for key, keys in scores.repeated.items()]}


def decode_scores(data: dict) -> Scores:
    scores = Scores(startups=data["startups"],
                    repeated={tuple(key): {tuple(at): None for at in keys} for key, keys in data["repeated"]})
    for h, device, trial_id, runs, repeats, curve in data["sources"]:
        scores.trial_of[(h, device)] = trial_id
        scores.kinds.setdefault(h, []).append(device)
        if runs is not None:
            scores.by_source[(h, device)] = runs
        for budget, values in repeats:
            scores.repeats[(h, device, budget)] = values
        if curve is not None:
            scores.curves[(h, device)] = curve
    for devices in scores.kinds.values():
        devices.sort()
    return scores


def encode(state: PopulationState) -> dict:
    """The state as plain JSON values (tuple keys as [key, value] pairs, sets as sorted lists)."""
    return {"seed": state.seed, "segment": state.segment,
            "members": {name: asdict(member) for name, member in state.members.items()},
            "head_hash": state.head_hash, "scores": encode_scores(state.scores),
            "baseline": state.baseline, "finished": state.finished,
            "candidates_finished": state.candidates_finished, "next_id": state.next_id,
            "proposals": state.proposals, "work": state.work, "references": _pairs(state.references),
            "recorded": sorted(state.recorded)}


def decode(data: dict) -> PopulationState:
    """encode's inverse: a state equal to the one encoded."""
    return PopulationState(seed=data["seed"], segment=data["segment"],
                           members={name: MemberState(**m) for name, m in data["members"].items()},
                           head_hash=dict(data["head_hash"]), scores=decode_scores(data["scores"]),
                           baseline=data["baseline"],
                           finished=data["finished"], candidates_finished=data["candidates_finished"],
                           next_id=data["next_id"], proposals=data["proposals"], work=data["work"],
                           references=_unpairs(data["references"]), recorded=set(data["recorded"]))


def write(archive_dir, state: PopulationState, journal_bytes: int) -> None:
    """The snapshot, written whole to a temp file, fsynced and renamed over the last one."""
    path = snapshot_path(archive_dir)
    temp = path.with_name(f".{SNAPSHOT_FILE}.{os.getpid()}.tmp")
    body = {"format": SNAPSHOT_FORMAT, "journal_bytes": journal_bytes, "state": encode(state)}
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(body, separators=(",", ":")))     # dumps: the C encoder, not dump's
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def read(archive_dir, seed: int, segment: int, journal_file: Path) -> Snapshot | None:
    """The snapshot if it can stand for the journal before its position: same format, seed and segment, and
    its position is a line end of `journal_file` as it is now; else None (replay everything)."""
    collecting = gc.isenabled()
    gc.disable()                 # millions of new objects, none garbage: collection passes would only walk them
    try:
        body = json.loads(snapshot_path(archive_dir).read_text(encoding="utf-8"))
        at = int(body["journal_bytes"])
        if body.get("format") != SNAPSHOT_FORMAT or not _line_end(journal_file, at):
            return None
        state = decode(body["state"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        if collecting:
            gc.enable()
    if state.seed != seed or state.segment != segment:
        return None
    return Snapshot(state, at)


def _line_end(journal_file: Path, at: int) -> bool:
    if at <= 0:
        return False
    with open(journal_file, "rb") as handle:
        handle.seek(at - 1)
        return handle.read(1) == b"\n"
