"""ARCHIVE/state.json: the population state as the driver had it at one point of its journal, so that resume and
status replay only the journal lines (and records) after that point instead of every one since the start.

A cache, never the truth: written atomically by the driver every SNAPSHOT_EVERY records, when its loop ends and
after a resume that found none; a snapshot that is missing, unreadable, of another format, seed or score segment,
or that does not end on a line of today's journal is ignored and the whole journal is replayed. Pure JSON; no
git, torch or Ray."""
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
SNAPSHOT_FORMAT = 2              # 2: the promotions' posteriors and the verdicts' gaps (the prior's data)
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
    """The scores as columns over the (source, device kind) pairs that Scores keys its dicts by, in the order they
    were judged: hashes and trial ids as one space-joined string each, device kinds by index, the scoring runs, and
    the budget whose every ok run equals the scoring runs (the usual case) or the repeats spelled out. Columns, not
    a list per pair: at 100,000 pairs this reads in a third of the time."""
    keys = list(scores.trial_of)                 # add() notes every pair here first: it holds them all
    position = {key: i for i, key in enumerate(keys)}
    devices = sorted({device for _, device in keys})
    index = {device: i for i, device in enumerate(devices)}
    repeats: dict = {}
    for (h, device, budget), values in scores.repeats.items():
        repeats.setdefault((h, device), []).append([budget, values])
    runs, budgets, spelled = [], [], []
    for i, key in enumerate(keys):
        scoring, mine = scores.by_source.get(key), repeats.get(key, [])
        runs.append(scoring)
        same = len(mine) == 1 and mine[0][1] == scoring
        budgets.append(mine[0][0] if same else None)
        if mine and not same:
            spelled.append([i, mine])
    return {"hashes": " ".join(h for h, _ in keys), "devices": devices,
            "device_of": [index[device] for _, device in keys],
            "trials": " ".join(scores.trial_of[key] for key in keys), "runs": runs, "budgets": budgets,
            "repeats": spelled, "curves": [[position[key], curve] for key, curve in scores.curves.items()],
            "startups": scores.startups, "shrunk": _pairs(scores.shrunk),
            "effects": [[gap, se, count] for (gap, se), count in scores.effects.items()],
            "repeated": [[list(key), [list(at) for at in keys_]] for key, keys_ in scores.repeated.items()]}


def decode_scores(data: dict) -> Scores:
    scores = Scores(startups=data["startups"], shrunk=_unpairs(data["shrunk"]),
                    effects={(gap, se): count for gap, se, count in data["effects"]},
                    repeated={tuple(key): {tuple(at): None for at in ats} for key, ats in data["repeated"]})
    hashes, trials = data["hashes"].split(" ") if data["hashes"] else [], data["trials"].split(" ")
    devices = data["devices"]
    keys = [(h, devices[d]) for h, d in zip(hashes, data["device_of"])]
    runs = data["runs"]
    scores.trial_of = dict(zip(keys, trials))
    scores.by_source = {key: values for key, values in zip(keys, runs) if values is not None}
    scores.repeats = {(*key, budget): list(values)           # its own list: add() appends to each apart
                      for key, values, budget in zip(keys, runs, data["budgets"]) if budget is not None}
    for h, device in keys:
        scores.kinds.setdefault(h, []).append(device)
    for i, spelled in data["repeats"]:
        for budget, values in spelled:
            scores.repeats[(*keys[i], budget)] = values
    for i, curve in data["curves"]:
        scores.curves[keys[i]] = curve
    for kinds in scores.kinds.values():
        kinds.sort()
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
