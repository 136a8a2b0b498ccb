"""Append-only parquet ledger of finished trials: one file per trial under ARCHIVE/ledger/.

Each file is written under a hidden temp name and renamed, so `pandas.read_parquet(ARCHIVE / "ledger")` always works."""
from __future__ import annotations

import datetime
import math
import numbers
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.spec import STATUSES

LEDGER_DIR = "ledger"
BACKUP_PREFIX = "ledger.corrupt-"      # ARCHIVE/ledger.corrupt-<time>/: files that repair set aside
SUFFIX = ".parquet"
TEMP_PREFIX = "."                      # pyarrow's dataset reader skips names starting with "." or "_"
STAMP_DIGITS = 15                      # finished_at in milliseconds, zero-padded: names sort by finish time
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")

SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("member", pa.string()),
    ("parent_commit", pa.string()),
    ("commit", pa.string()),
    ("proposer", pa.string()),
    ("status", pa.string()),            # one of trainer.spec.STATUSES
    ("verdict", pa.string()),
    ("promoted", pa.bool_()),           # the member's branch moved to this trial's commit
    ("val_bpb", pa.float64()),
    ("val_loss", pa.float64()),
    ("budget_kind", pa.string()),
    ("budget_seconds", pa.float64()),
    ("training_seconds", pa.float64()),
    ("total_seconds", pa.float64()),
    ("startup_seconds", pa.float64()),
    ("judge_seconds", pa.float64()),
    ("device", pa.string()),
    ("device_speed", pa.float64()),
    ("budget_factor", pa.float64()),
    ("backend", pa.string()),
    ("peak_vram_mb", pa.float64()),
    ("tokens", pa.int64()),
    ("steps", pa.int64()),
    ("params", pa.int64()),
    ("mfu", pa.float64()),
    ("seed", pa.int64()),
    ("margin", pa.float64()),
    ("runs", pa.int64()),
    ("decided_by", pa.string()),
    ("started_at", pa.float64()),       # seconds since the epoch
    ("finished_at", pa.float64()),      # seconds since the epoch
    ("reason", pa.string()),
    ("message", pa.string()),
    ("reused_from", pa.string()),       # trial whose result was reused for a byte-identical candidate
    ("attempt", pa.int64()),            # dispatch attempts
    ("infra_failures", pa.int64()),
    ("run_scores", pa.string()),
    ("slot", pa.string()),              # the trial actor (GPU or CPU slot) that ran the deciding run
    ("log_tail", pa.string()),          # crash / timeout: the end of the trial's log (capped)
    ("agent_seconds", pa.float64()),    # agent and endpoint proposals: seconds the proposer took
    ("agent_log", pa.string()),         # agent proposals: the end of the agent's stdout and stderr (capped)
    ("llm_prompt_tokens", pa.int64()),  # endpoint proposals: the response's usage
    ("llm_completion_tokens", pa.int64()),
    ("llm_cost", pa.float64()),         # endpoint proposals: usage x proposers.endpoint.prices (dollars)
    ("timeline", pa.string()),          # JSON: wall-clock stamps launch/ready/go/start/finish/judge_start/judge_end
    # the verdict's evidence (issue 9); older archives read these as nulls
    ("head_runs", pa.int64()),          # runs of the head the candidate was compared with
    ("sigma", pa.float64()),            # σ of one run, pooled over this device kind and budget
    ("sigma_dof", pa.int64()),          # its degrees of freedom
    ("evidence", pa.float64()),         # selection: log LR (high: a win); confirmation: z over all runs (low: a win)
    ("bar", pa.float64()),              # what it was read against: the SPRT's upper threshold, or -confirm_bar
    ("rule", pa.string()),              # the rule and its knobs
    ("selection_runs", pa.int64()),     # runs that selected it; a promotion's later runs confirmed it
    ("head_score", pa.float64()),       # a promotion's score as a head: the mean of its confirmation runs
    ("segment", pa.int64()),            # score segment (ARCHIVE/config_history.jsonl); older rows read null = 0
])
COLUMNS = tuple(SCHEMA.names)


class LedgerError(Exception):
    """A ledger file cannot be read; the message names it and the repair command."""


def valid_id(value, what: str = "trial_id") -> str:
    """Check a trial id or member name: safe as a file name and as one git ref component."""
    if (not isinstance(value, str) or not NAME_PATTERN.match(value) or ".." in value
            or value.endswith(".lock")):
        raise ValueError(f"{what} {value!r} is not a valid name: use letters, digits, '_', '.', '-' "
                         "(at most 100, starting with a letter or digit, no '..', not ending in .lock)")
    return value


def ledger_dir(archive_dir) -> Path:
    return Path(archive_dir) / LEDGER_DIR


def _coerce(field: pa.Field, value):
    """One value as the plain Python type of its column; None for missing (NaN counts as missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    kind = field.type
    if pa.types.is_string(kind) and isinstance(value, str):
        return str(value)
    if pa.types.is_boolean(kind) and isinstance(value, (bool, np.bool_)):
        return bool(value)
    if pa.types.is_int64(kind) and not isinstance(value, bool):
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
    if pa.types.is_float64(kind) and not isinstance(value, bool):
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, numbers.Real):
            number = float(value)
            return None if math.isnan(number) else number
    raise ValueError(f"ledger column {field.name!r} expects {kind}, got {value!r} ({type(value).__name__})")


def normalize(row: dict) -> dict:
    """Every column of the schema, in order, as plain Python values; unknown keys are an error."""
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(f"ledger row has unknown columns: {', '.join(unknown)} (known: {', '.join(COLUMNS)})")
    out = {f.name: _coerce(f, row.get(f.name)) for f in SCHEMA}
    valid_id(out["trial_id"], "ledger row trial_id")
    if out["status"] is not None and out["status"] not in STATUSES:
        raise ValueError(f"ledger row {out['trial_id']}: status {out['status']!r} is not one of {', '.join(STATUSES)}")
    return out


def file_name(row: dict) -> str:
    """`<finished_at in ms, zero-padded>-<trial_id>.parquet` (now when finished_at is missing)."""
    stamp = row.get("finished_at")
    millis = int(round((time.time() if stamp is None else stamp) * 1000))
    return f"{millis:0{STAMP_DIGITS}d}-{row['trial_id']}{SUFFIX}"


def trial_of(name: str) -> str:
    """The trial id in a ledger file name."""
    return name[: -len(SUFFIX)].split("-", 1)[1]


def ledger_files(archive_dir) -> list[Path]:
    """The ledger's data files in name order (temp files and anything hidden are not data)."""
    folder = ledger_dir(archive_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.endswith(SUFFIX) and not p.name.startswith((".", "_")) and "-" in p.name)


def trial_ids(archive_dir) -> set:
    """Ids of every trial in the ledger, from the file names alone."""
    return {trial_of(p.name) for p in ledger_files(archive_dir)}


def _write_file(path: Path, rows: list[dict]) -> None:
    """Write rows to a hidden temp file in the same folder, flush it to disk, then rename it into place."""
    temp = path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}.tmp"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    try:
        with open(temp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def append(archive_dir, row: dict) -> Path:
    """Record one finished trial as its own parquet file; returns the file's path."""
    norm = normalize(row)
    folder = ledger_dir(archive_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for path in ledger_files(archive_dir):
        if trial_of(path.name) == norm["trial_id"]:
            raise ValueError(f"trial {norm['trial_id']} is already in the ledger ({path})")
    path = folder / file_name(norm)
    _write_file(path, [norm])
    return path


def _read_table(path: Path, archive_dir) -> pa.Table:
    """One ledger file, conformed to the schema; LedgerError names the file when it cannot be read."""
    try:
        table = pq.read_table(path)
        columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
                   else pa.nulls(table.num_rows, f.type) for f in SCHEMA]
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise LedgerError(f"{path}: unreadable ledger file ({exc}). Run `popsearch repair {archive_dir}` "
                          "to rebuild the ledger from the archive's commit trailers") from exc
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def read(archive_dir) -> pd.DataFrame:
    """The whole ledger as a DataFrame with the fixed columns, sorted by finished_at."""
    tables = [_read_table(p, archive_dir) for p in ledger_files(archive_dir)]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    frame = table.to_pandas()
    return frame.sort_values("finished_at", kind="stable", na_position="last").reset_index(drop=True)


class _Aside:
    """The backup folder ARCHIVE/ledger.corrupt-<time>/, made on first use."""

    def __init__(self, archive_dir):
        self.archive_dir = Path(archive_dir)
        self.folder: Path | None = None

    def path_for(self, name: str) -> Path:
        if self.folder is None:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            folder, n = self.archive_dir / f"{BACKUP_PREFIX}{stamp}", 1
            while folder.exists():
                n += 1
                folder = self.archive_dir / f"{BACKUP_PREFIX}{stamp}-{n}"
            folder.mkdir()
            self.folder = folder
        return self.folder / name

    def move(self, path: Path) -> Path:
        target = self.path_for(path.name)
        os.replace(path, target)
        return target

    def copy(self, path: Path) -> Path:
        target = self.path_for(path.name)
        shutil.copy2(path, target)
        return target


def _clear_temps(folder: Path) -> None:
    for path in folder.glob(f"{TEMP_PREFIX}*.tmp"):
        path.unlink(missing_ok=True)


def rebuild(archive_dir, rows) -> dict:
    """Make the ledger hold exactly `rows` (plus readable rows of trials not in them), one atomic file at a time.

    Corrupt files and files that disagree with `rows` are moved to ARCHIVE/ledger.corrupt-<time>/, never
    deleted; at every moment the folder reads as a whole. Returns what was written, kept, carried and moved."""
    wanted = {}
    for row in rows:
        norm = normalize(row)
        wanted[norm["trial_id"]] = norm
    folder = ledger_dir(archive_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _clear_temps(folder)
    aside = _Aside(archive_dir)
    report = {"written": [], "kept": [], "carried": [], "moved": [], "backup": None}
    readable = _readable_files(archive_dir, aside, report)
    for trial_id, row in wanted.items():
        _put_row(folder / file_name(row), row, readable, aside, report)
    targets = {folder / file_name(row) for row in wanted.values()}
    for path in readable:
        trial_id = trial_of(path.name)
        if path in targets:
            continue
        if trial_id in wanted or trial_id in report["carried"]:
            report["moved"].append(str(aside.move(path)))
        else:
            report["carried"].append(trial_id)
    report["backup"] = str(aside.folder) if aside.folder else None
    return report


def _readable_files(archive_dir, aside: _Aside, report: dict) -> dict:
    """{path: rows} of the ledger files that read; the others are moved aside."""
    readable = {}
    for path in ledger_files(archive_dir):
        try:
            readable[path] = _read_table(path, archive_dir).to_pylist()
        except LedgerError:
            report["moved"].append(str(aside.move(path)))
    return readable


def _put_row(target: Path, row: dict, readable: dict, aside: _Aside, report: dict) -> None:
    """Keep the target file when it already holds the row; else copy any old one aside and write it."""
    if readable.get(target) == [row]:
        report["kept"].append(row["trial_id"])
    else:
        if target.exists():
            report["moved"].append(str(aside.copy(target)))
        _write_file(target, [row])
        report["written"].append(row["trial_id"])
