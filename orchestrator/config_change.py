"""A config given to an existing archive: its differences from ARCHIVE/config.yaml, key by key, and the score
segments (ARCHIVE/config_history.jsonl) that an accepted change of what a score means starts."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import NamedTuple

import yaml

from orchestrator.config import Config, ConfigError, from_dict

SAVED_CONFIG = "config.yaml"
HISTORY_FILE = "config_history.jsonl"
ACCEPT_FLAG = "--accept-config-change"
# Keys that may change between runs of one archive without the flag: where it lives, when to stop, how the
# machines are used and how long the operational limits are. None of them changes what a val_bpb means.
FREE_KEYS = ("archive", "stop.", "resources.", "budget.startup_allowance", "budget.startup_floor",
             "budget.finish_allowance", "judge.timeout_seconds", "data.cache_dir", "data.download_workers",
             "data.download_retries")
# Keys that change what a score means (the training budget, the data, the judge, a CPU trial's threads), but
# the free ones above: an accepted change starts a new segment, whose scores are never compared with the old.
THREADS_KEY = "resources.threads_per_trial"
SCORE_KEYS = ("budget.", "judge.", "data.", THREADS_KEY)
# Read only when an archive is created (the members and their seed commit): on an existing archive they
# change nothing (the refusal says so).
CREATION_KEYS = ("population.size", "population.overrides", "population.seed_train_py")
MISSING = type("Missing", (), {"__repr__": lambda self: "(unset)"})()   # a key one of the two configs lacks


class Change(NamedTuple):
    key: str
    old: object
    new: object

    def __str__(self) -> str:
        return f"{self.key}: {_shown(self.old)} -> {_shown(self.new)}"


def _shown(value) -> str:
    """A value as the refusal line shows it: strings quoted, lists as JSON, the rest as Python prints them."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return json.dumps(value)
    return repr(value) if value is MISSING else str(value)


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".") for p in patterns)


def is_free(key: str) -> bool:
    return _matches(key, FREE_KEYS) and key != THREADS_KEY


def starts_segment(key: str) -> bool:
    return _matches(key, SCORE_KEYS) and not is_free(key)


def flat(settings: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a nested settings mapping (mappings inside it, overrides included, flattened)."""
    out = {}
    for name, value in settings.items():
        if isinstance(value, dict):                 # an empty mapping adds no key (the same as leaving it out)
            out.update(flat(value, f"{prefix}{name}."))
        else:
            out[prefix + str(name)] = value
    return out


def differences(old: dict, new: dict) -> list[Change]:
    """Every dotted key whose value differs between two config dicts (Config.to_dict), in key order."""
    a, b = flat(old), flat(new)
    return [Change(k, a.get(k, MISSING), b.get(k, MISSING)) for k in sorted({*a, *b})
            if a.get(k, MISSING) != b.get(k, MISSING)]


def needs_acceptance(changes: list[Change]) -> list[Change]:
    """The changes that the flag must accept (all but FREE_KEYS)."""
    return [c for c in changes if not is_free(c.key)]


def saved_settings(archive_dir) -> dict | None:
    """The archive's config.yaml as a full config dict (defaults filled in), None when it has none."""
    path = Path(archive_dir) / SAVED_CONFIG
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: the archive's saved config is not valid YAML ({' '.join(str(exc).split())})") \
            from None
    return from_dict(raw or {}, where=str(path)).to_dict()


def refusal(cfg: Config, archive_dir, changes: list[Change]) -> str:
    """One line: which config differs from which archive, how, and the two ways on."""
    where = cfg.source or "the config"
    segment = [c.key for c in changes if starts_segment(c.key)]
    inert = [c.key for c in changes if _matches(c.key, CREATION_KEYS)]
    notes = (f"; a new score segment would start ({', '.join(segment)})" if segment else "") + \
            (f"; read only when an archive is created, no effect here: {', '.join(inert)}" if inert else "")
    return (f"{where} differs from {Path(archive_dir) / SAVED_CONFIG}: {', '.join(map(str, changes))}{notes}. "
            f"Nothing was started: run again with {ACCEPT_FLAG} to take the change, or `popsearch resume "
            f"{archive_dir}` to keep the archive's config")


def check(cfg: Config, archive_dir, accept: bool) -> list[Change]:
    """The changes a run would make to an existing archive's config; ConfigError (the refusal line) when some
    need the flag and it was not given."""
    saved = saved_settings(archive_dir)
    if saved is None:
        return []
    changes = needs_acceptance(differences(saved, cfg.to_dict()))
    if changes and not accept:
        raise ConfigError(refusal(cfg, archive_dir, changes))
    return changes


# ---- the history of accepted changes, and the segments -------------------------------------------------

def history(archive_dir) -> list[dict]:
    """Every accepted change recorded in ARCHIVE/config_history.jsonl, oldest first ([] when none)."""
    path = Path(archive_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def current_segment(archive_dir) -> int:
    """The score segment new trials belong to: 0, plus one for every accepted change of a SCORE_KEYS key."""
    entries = history(archive_dir)
    return int(entries[-1]["segment"]) if entries else 0


def history_entry(changes: list[Change], segment_before: int, next_trial: int, source: str) -> dict:
    new = any(starts_segment(c.key) for c in changes)
    return {"time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "from_trial": next_trial, "segment": segment_before + int(new), "new_segment": new,
            "config": source, "changes": [{"key": c.key, "old": _recorded(c.old), "new": _recorded(c.new)}
                                          for c in changes]}


def _recorded(value):
    return None if value is MISSING else value


def record(archive_dir, cfg: Config, next_trial: int) -> int:
    """Before a driver saves its config over the archive's: append the accepted changes (if any) to the
    history, and return the segment this run's trials belong to. The caller holds the archive's lock."""
    archive_dir = Path(archive_dir)
    saved = saved_settings(archive_dir)
    segment = current_segment(archive_dir)
    changes = [] if saved is None else needs_acceptance(differences(saved, cfg.to_dict()))
    if not changes:
        return segment
    entry = history_entry(changes, segment, next_trial, cfg.source)
    lines = [json.dumps(e, default=str) for e in [*history(archive_dir), entry]]
    path = archive_dir / HISTORY_FILE
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "w") as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)
    return entry["segment"]
