"""Append-only parquet ledger of finished trials under ARCHIVE/ledger/: segments of thousands of rows and a short tail.

Every file is a fsynced, renamed parquet file of SCHEMA, so `pandas.read_parquet(ARCHIVE / "ledger")` reads it all."""
from __future__ import annotations

import datetime
import math
import numbers
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.spec import STATUSES

if TYPE_CHECKING:
    import pandas

LEDGER_DIR = "ledger"
BACKUP_PREFIX = "ledger.corrupt-"      # ARCHIVE/ledger.corrupt-<time>/: files that repair set aside
SUFFIX = ".parquet"
SEGMENT_PREFIX = "segment-"            # segment-<6-digit sequence>.parquet: folded rows; a higher number wins
SEGMENT_DIGITS = 6
SEGMENT_ROWS = 2000                    # a segment is closed when it holds this many rows
TAIL_ROWS = 50                         # the tail is folded into the open (last) segment at this many rows
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
    ("head_runs", pa.float64()),        # the head's weight in runs (its runs, a promotion's posterior) compared with
    ("sigma", pa.float64()),            # σ of one run, pooled over this device kind and budget
    ("sigma_dof", pa.int64()),          # its degrees of freedom
    ("evidence", pa.float64()),         # P(the edit is a win) (an earlier rule: log LR or z)
    ("bar", pa.float64()),              # what it was read against: selection.promote_at
    ("rule", pa.string()),              # the rule and its knobs
    ("selection_runs", pa.int64()),     # runs that selected it (an earlier rule: later runs confirmed it)
    ("head_score", pa.float64()),       # a promotion's score as a head: its posterior mean
    ("head_weight", pa.float64()),      # ... and that posterior's weight in runs
    ("effect", pa.float64()),           # the gap, candidate mean - head, in σ (the prior's data)
    ("effect_se", pa.float64()),        # its standard error, in σ
    ("segment", pa.int64()),            # score segment (ARCHIVE/config_history.jsonl); older rows read null = 0
    # identities of the train.py texts (orchestrator.fingerprint.source_hash), so resume never reads git per row
    ("source_hash", pa.string()),       # this trial's train.py
    ("parent_hash", pa.string()),       # its parent commit's train.py
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


def _is_missing(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    pandas = sys.modules.get("pandas")      # pandas' NA and NaT come only from a caller that has pandas loaded
    return pandas is not None and (value is pandas.NA or value is pandas.NaT)


def _coerce(field: pa.Field, value):
    """One value as the plain Python type of its column; None for missing (NaN counts as missing)."""
    if _is_missing(value):
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
    """A tail file's name: `<finished_at in ms, zero-padded>-<trial_id>.parquet` (now when finished_at is missing).

    Today's tail files are named as the one-row files of the first ledger layout, so an old ledger reads as a long
    tail and is migrated by folding it."""
    stamp = row.get("finished_at")
    millis = int(round((time.time() if stamp is None else stamp) * 1000))
    return f"{millis:0{STAMP_DIGITS}d}-{row['trial_id']}{SUFFIX}"


def segment_name(number: int) -> str:
    return f"{SEGMENT_PREFIX}{number:0{SEGMENT_DIGITS}d}{SUFFIX}"


def segment_number(name: str) -> int | None:
    """The sequence number of a segment file's name; None for a tail file."""
    if not name.startswith(SEGMENT_PREFIX):
        return None
    digits = name[len(SEGMENT_PREFIX): -len(SUFFIX)]
    return int(digits) if digits.isdigit() else None


def trial_of(name: str) -> str:
    """The trial id in a tail file's name."""
    return name[: -len(SUFFIX)].split("-", 1)[1]


def _is_data(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith((".", "_")) and "-" in name


def ledger_files(archive_dir) -> list[Path]:
    """The ledger's data files in reading order: tail files by name, then segments by number (later wins)."""
    folder = ledger_dir(archive_dir)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if _is_data(p.name)]
    tail = sorted(n for n in names if segment_number(n) is None)
    segments = sorted((n for n in names if segment_number(n) is not None), key=segment_number)
    return [folder / n for n in tail + segments]


def trial_ids(archive_dir, skip_unreadable: bool = False) -> set:
    """Ids of every trial in the ledger, reading only that column of each file (see read_table)."""
    return set().union(*_each_readable(archive_dir, _read_ids, skip_unreadable))


def read_columns(archive_dir, columns: list[str]) -> dict:
    """{column: [values]} of a few columns over every row (a later file's row of a trial winning, as in
    read_table), reading only those columns; unreadable files are passed over (their trials show as missing)."""
    names = ["trial_id", *columns]
    tables = list(_each_readable(archive_dir, lambda path, where: _read_file(path, where, names), True))
    if not tables:
        return {name: [] for name in names}
    return _latest_rows(pa.concat_tables(tables)).to_pydict()


def rows_of(archive_dir, wanted) -> dict:
    """{trial id: row} of the wanted trials, reading files from the newest back until all are found: the tail
    files, then the segments from the last (recent trials sit there; a twin a killed fold left holds the same
    row); unreadable files are passed over."""
    missing, found = set(wanted), {}
    files = ledger_files(archive_dir)
    tail = [p for p in files if segment_number(p.name) is None]
    for path in [*reversed(tail), *reversed(files[len(tail):])]:
        if not missing:
            break
        try:
            table = _read_file(path, archive_dir)
        except LedgerError:
            continue
        for row in table.to_pylist():
            if row["trial_id"] in missing:
                missing.discard(row["trial_id"])
                found[row["trial_id"]] = row
    return found


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TAIL_WRITE = {"compression": "NONE", "use_dictionary": False, "write_statistics": False}  # one row, soon folded


def _write_file(path: Path, rows: list[dict], options: dict | None = None) -> None:
    """Write rows to a hidden temp file in the same folder, flush it to disk, rename it into place, sync the folder."""
    temp = path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}.tmp"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    try:
        with open(temp, "wb") as fh:
            pq.write_table(table, fh, **(options or {}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
        _fsync_dir(path.parent)
    finally:
        temp.unlink(missing_ok=True)


def _unreadable(path: Path, archive_dir, exc: Exception) -> LedgerError:
    return LedgerError(f"{path}: unreadable ledger file ({exc}). Run `popsearch repair {archive_dir}` "
                       "to rebuild the ledger from the archive's commit trailers")


def _read_file(path: Path, archive_dir, names: list[str] | None = None) -> pa.Table:
    """One ledger file (only the columns `names`, when given), conformed to the schema: a column the file lacks
    reads as nulls. pq.ParquetFile, not pq.read_table (that loads pyarrow.dataset and pandas). LedgerError names
    the file when it cannot be read."""
    fields = list(SCHEMA) if names is None else [SCHEMA.field(name) for name in names]
    try:
        handle = pq.ParquetFile(path)
        present = handle.schema_arrow.names
        table = handle.read(columns=[f.name for f in fields if f.name in present])
        columns = [table.column(f.name).cast(f.type) if f.name in present
                   else pa.nulls(table.num_rows, f.type) for f in fields]
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _unreadable(path, archive_dir, exc) from exc
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _read_ids(path: Path, archive_dir) -> list[str]:
    """The trial_id column of one ledger file (a file without one is unreadable); LedgerError as _read_file."""
    try:
        return pq.ParquetFile(path).read(columns=["trial_id"]).column("trial_id").to_pylist()
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
        raise _unreadable(path, archive_dir, exc) from exc


def _each_readable(archive_dir, read, skip_unreadable: bool):
    """read(path, archive_dir) of every ledger file in reading order; an unreadable one raises its LedgerError,
    or is passed over with skip_unreadable."""
    for path in ledger_files(archive_dir):
        try:
            yield read(path, archive_dir)
        except LedgerError:
            if not skip_unreadable:
                raise


def _latest_rows(table: pa.Table) -> pa.Table:
    """One row per trial id: the last one in reading order (a fold or rebuild killed half-way leaves twins)."""
    ids = table.column("trial_id").to_pylist()
    if len(set(ids)) == len(ids):
        return table
    last = {trial_id: i for i, trial_id in enumerate(ids)}
    return table.take(sorted(last.values()))


def _concat(tables: list[pa.Table]) -> pa.Table:
    return _latest_rows(pa.concat_tables(tables)) if tables else SCHEMA.empty_table()


def read_table(archive_dir, skip_unreadable: bool = False) -> pa.Table:
    """The whole ledger as one arrow table of SCHEMA, one row per trial, in file order; an unreadable file is a
    LedgerError, or left out with skip_unreadable (a reader that completes the rows from the trailers)."""
    return _concat(list(_each_readable(archive_dir, _read_file, skip_unreadable)))


def sort_frame(frame: "pandas.DataFrame") -> "pandas.DataFrame":
    return frame.sort_values("finished_at", kind="stable", na_position="last").reset_index(drop=True)


def read(archive_dir) -> "pandas.DataFrame":
    """The whole ledger as a DataFrame with the fixed columns, sorted by finished_at (pandas is loaded by
    to_pandas, for the readers that want frames, not by every writer and status)."""
    return sort_frame(read_table(archive_dir).to_pandas())


class Ledger:
    """The writer's open ledger: the folder is listed once, here; appends never list it again.

    append() writes one fsynced tail file per row (durable when it returns). At TAIL_ROWS tail rows, the open
    segment's rows plus the tail are written as the next segment (renamed into place), then the replaced segment
    and the tail files are removed; a segment of SEGMENT_ROWS rows is closed. A kill in between leaves twins
    that read as one row (the newest file's), and the next open removes the stale files."""

    def __init__(self, archive_dir, segment_rows: int = SEGMENT_ROWS, tail_rows: int = TAIL_ROWS):
        self.archive_dir = Path(archive_dir)
        self.folder = ledger_dir(archive_dir)
        self.segment_rows, self.tail_rows = segment_rows, min(tail_rows, segment_rows)
        self.open_rows: list[dict] = []         # rows of the last segment while it has room
        self.folder.mkdir(parents=True, exist_ok=True)
        _clear_temps(self.folder)
        self.tail: list[tuple[Path, dict]] = []
        self.segments: list[Path] = []
        self.ids: set = set()                   # every trial id in the ledger
        self._load()
        self.last_number = max((segment_number(p.name) for p in self.segments), default=0)

    def rehome(self, archive_dir) -> None:
        """The archive folder was renamed (Archive.create): the same ledger, at its new place."""
        self.archive_dir, self.folder = Path(archive_dir), ledger_dir(archive_dir)
        self.tail = [(self.folder / p.name, row) for p, row in self.tail]
        self.segments = [self.folder / p.name for p in self.segments]

    def _load(self) -> None:
        """The tail files and the open segment read whole, the closed segments' ids only (the rows stay on disk
        for readers): opening a ledger of many segments costs one column of each."""
        tail_tables, segment_ids = [], []
        for path in ledger_files(self.archive_dir):
            if segment_number(path.name) is None:
                tail_tables.append((path, _read_file(path, self.archive_dir)))
            else:
                self.segments.append(path)
                segment_ids.append(_read_ids(path, self.archive_dir))
        self._drop_replaced_segment(segment_ids)
        if self.segments and len(segment_ids[-1]) < self.segment_rows:
            self.open_rows = _read_file(self.segments[-1], self.archive_dir).to_pylist()
        self.ids = set().union(*segment_ids)
        for path, table in tail_tables:
            if table.num_rows == 1 and table.column("trial_id")[0].as_py() in self.ids:
                path.unlink()                       # a fold finished its segment but not the clean-up
                continue
            self.tail.extend((path, row) for row in table.to_pylist())
        self.ids.update(row["trial_id"] for _, row in self.tail)

    def _drop_replaced_segment(self, ids: list[list[str]]) -> None:
        """A fold killed before its clean-up leaves the segment it replaced: every row of it is in the next one."""
        if len(ids) < 2:
            return
        if set(ids[-2]) <= set(ids[-1]):
            self.segments.pop(-2).unlink()
            ids.pop(-2)

    def _write_segment(self, rows: list[dict]) -> None:
        target = self.folder / segment_name(self.last_number + 1)
        _write_file(target, rows)
        self.last_number += 1
        self.segments.append(target)

    def append(self, row: dict) -> dict:
        """Record one finished trial as a durable tail file; folds the tail when it is full. Returns the row."""
        norm = normalize(row)
        if norm["trial_id"] in self.ids:
            raise ValueError(f"trial {norm['trial_id']} is already in the ledger ({self.folder})")
        path = self.folder / file_name(norm)
        _write_file(path, [norm], TAIL_WRITE)
        self.ids.add(norm["trial_id"])
        self.tail.append((path, norm))
        if len(self.tail) >= self.tail_rows:
            self.fold()
        return norm

    def fold(self) -> None:
        """The open segment's rows and the tail's as new segments (renamed into place), then the replaced segment
        and the tail files removed."""
        replaced = self.segments[-1] if self.open_rows else None
        rows = self.open_rows + [row for _, row in self.tail]
        for start in range(0, len(rows), self.segment_rows):
            self._write_segment(rows[start: start + self.segment_rows])
        last = len(rows) % self.segment_rows
        self.open_rows = rows[len(rows) - last:] if last else []
        if replaced is not None:
            self.segments.remove(replaced)
            replaced.unlink(missing_ok=True)
        for path, _ in self.tail:
            path.unlink(missing_ok=True)
        self.tail = []

    def extend(self, rows: list[dict]) -> list[str]:
        """Rows of trials not yet in the ledger (repair, migration) written straight as segments; returns their ids."""
        fresh = []
        for row in rows:
            norm = normalize(row)
            if norm["trial_id"] not in self.ids:
                self.ids.add(norm["trial_id"])
                fresh.append(norm)
        for start in range(0, len(fresh), self.segment_rows):
            self._write_segment(fresh[start: start + self.segment_rows])
        self.open_rows = []                     # the last segment is a batch of its own: not reopened
        return [row["trial_id"] for row in fresh]

    def rewrite(self, rows: list[dict]) -> None:
        """The whole ledger replaced by `rows` (the migration of an old layout): the new segments first (numbered
        after the old ones, so they win), then the old files removed; at every moment the folder reads every row."""
        old = [p for p, _ in self.tail] + self.segments
        self.tail, self.segments, self.ids = [], [], set()
        self.extend(rows)
        for path in old:
            path.unlink(missing_ok=True)


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


def set_aside_unreadable(archive_dir) -> dict:
    """Move every ledger file that does not read to ARCHIVE/ledger.corrupt-<time>/ (never deleted), so the rest
    reads again and repair can write the lost rows back from the trailers. Returns {"moved": [...], "backup": ...}."""
    aside = _Aside(archive_dir)
    moved = []
    for path in ledger_files(archive_dir):
        try:
            pq.read_metadata(path)
            _read_file(path, archive_dir)
        except (LedgerError, pa.ArrowException, OSError):
            moved.append(str(aside.move(path)))
    return {"moved": moved, "backup": str(aside.folder) if aside.folder else None}
