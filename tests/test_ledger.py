"""The parquet ledger on real files: schema and types, durable appends, folding into segments, kills, corrupt files.

No git here: the ledger is a folder of parquet files that pandas reads as a whole."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator import ledger

REPO = Path(__file__).resolve().parents[1]


def row(trial_id, finished_at, **extra):
    return {"trial_id": trial_id, "member": "a", "status": "ok", "val_bpb": 1.5, "finished_at": finished_at, **extra}


def test_append_and_read_keep_types_and_order(tmp_path):
    book = ledger.Ledger(tmp_path)
    book.append(row("t2", 200.0, tokens=1000, promoted=True, message="two\nlines", source_hash="ab" * 20))
    book.append(row("t1", 100.0, val_bpb=None, status="crash", reason="boom"))
    book.append(row("t3", None))
    frame = ledger.read(tmp_path)
    assert frame["trial_id"].tolist() == ["t1", "t2", "t3"]           # by finished_at, missing last
    assert list(frame.columns) == list(ledger.COLUMNS)
    assert frame["val_bpb"].dtype == "float64" and pd.isna(frame.loc[0, "val_bpb"])
    assert frame.loc[1, "tokens"] == 1000 and frame.loc[1, "message"] == "two\nlines"
    assert frame.loc[1, "source_hash"] == "ab" * 20 and pd.isna(frame.loc[0, "parent_hash"])
    assert pd.isna(frame.loc[0, "commit"]) and pd.isna(frame.loc[0, "tokens"])
    for path in ledger.ledger_files(tmp_path):
        assert pq.read_schema(path).remove_metadata().equals(ledger.SCHEMA)
    whole = pd.read_parquet(tmp_path / "ledger")
    assert sorted(whole["trial_id"]) == ["t1", "t2", "t3"]
    assert ledger.trial_ids(tmp_path) == {"t1", "t2", "t3"}
    assert ledger.Ledger(tmp_path).ids == {"t1", "t2", "t3"}           # reopened: the folder is listed once


def test_empty_ledger_reads_as_empty_frame(tmp_path):
    frame = ledger.read(tmp_path)
    assert frame.empty and list(frame.columns) == list(ledger.COLUMNS)
    assert ledger.trial_ids(tmp_path) == set()


def test_bad_rows_are_refused_with_names(tmp_path):
    book = ledger.Ledger(tmp_path)
    with pytest.raises(ValueError, match="unknown columns: bogus, val_bbp"):
        book.append(row("t1", 1.0, val_bbp=1.0, bogus=2))
    with pytest.raises(ValueError, match="'tokens' expects int64"):
        book.append(row("t1", 1.0, tokens="many"))
    with pytest.raises(ValueError, match="status 'great'"):
        book.append(row("t1", 1.0, status="great"))
    with pytest.raises(ValueError, match="trial_id '../x'"):
        book.append(row("../x", 1.0))
    book.append(row("t1", 1.0))
    with pytest.raises(ValueError, match="t1 is already in the ledger"):
        book.append(row("t1", 2.0))
    assert len(ledger.read(tmp_path)) == 1


def test_leftover_temp_file_is_ignored(tmp_path):
    ledger.Ledger(tmp_path).append(row("t1", 1.0))
    folder = tmp_path / "ledger"
    (folder / ".000000000002000-t2.parquet.999.tmp").write_bytes(b"PAR1 half a write")
    (folder / "_scratch.parquet").write_bytes(b"junk")
    assert ledger.read(tmp_path)["trial_id"].tolist() == ["t1"]
    assert pd.read_parquet(folder)["trial_id"].tolist() == ["t1"]
    assert ledger.trial_ids(tmp_path) == {"t1"}
    ledger.Ledger(tmp_path)                               # the writer's open clears its temp files
    assert not (folder / ".000000000002000-t2.parquet.999.tmp").exists()


def test_truncated_file_names_itself_and_the_repair_command(tmp_path):
    book = ledger.Ledger(tmp_path)
    book.append(row("t1", 1.0))
    book.append(row("t2", 2.0))
    bad = book.tail[-1][0]
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(ledger.LedgerError, match=f"{bad.name}.*popsearch repair {tmp_path}"):
        ledger.read(tmp_path)
    assert ledger.read_table(tmp_path, skip_unreadable=True).column("trial_id").to_pylist() == ["t1"]
    moved = ledger.set_aside_unreadable(tmp_path)
    assert moved["moved"] == [str(Path(moved["backup"]) / bad.name)] and Path(moved["moved"][0]).exists()
    assert ledger.read(tmp_path)["trial_id"].tolist() == ["t1"]


def test_the_tail_folds_into_segments(tmp_path):
    book = ledger.Ledger(tmp_path, segment_rows=3)
    for i in range(7):
        book.append(row(f"t{i}", float(i)))
    names = [p.name for p in ledger.ledger_files(tmp_path)]
    assert names == [ledger.file_name(row("t6", 6.0)), "segment-000001.parquet", "segment-000002.parquet"]
    assert pq.read_metadata(tmp_path / "ledger" / "segment-000002.parquet").num_rows == 3
    assert sorted(pd.read_parquet(tmp_path / "ledger")["trial_id"]) == [f"t{i}" for i in range(7)]
    again = ledger.Ledger(tmp_path, segment_rows=3)
    assert len(again.tail) == 1 and again.last_number == 2 and len(again.ids) == 7
    again.extend([row("t1", 1.0), row("t9", 9.0)])        # repair: only rows not in the ledger are written
    assert ledger.read(tmp_path)["trial_id"].tolist() == [f"t{i}" for i in range(7)] + ["t9"]


def test_the_open_segment_grows_by_rename_until_it_is_full(tmp_path):
    book = ledger.Ledger(tmp_path, segment_rows=5, tail_rows=2)
    for i in range(7):
        book.append(row(f"t{i}", float(i)))
    names = [p.name for p in ledger.ledger_files(tmp_path)]
    assert names == [ledger.file_name(row("t6", 6.0)), "segment-000003.parquet", "segment-000004.parquet"]
    assert [pq.read_metadata(tmp_path / "ledger" / n).num_rows for n in names[1:]] == [5, 1]
    again = ledger.Ledger(tmp_path, segment_rows=5, tail_rows=2)
    assert [r["trial_id"] for r in again.open_rows] == ["t5"] and len(again.tail) == 1
    again.append(row("t7", 7.0))                          # t5..t7 now in segment 5, which replaced segment 4
    assert [p.name for p in ledger.ledger_files(tmp_path)] == ["segment-000003.parquet", "segment-000005.parquet"]
    assert ledger.read(tmp_path)["trial_id"].tolist() == [f"t{i}" for i in range(8)]


def test_rewrite_folds_an_old_one_file_per_row_ledger(tmp_path):
    folder = tmp_path / "ledger"
    folder.mkdir()
    for i in range(5):                                    # the first layout: <ms>-<trial>.parquet, fewer columns
        old = pd.DataFrame([{"trial_id": f"t{i}", "status": "ok", "finished_at": float(i)}])
        old.to_parquet(folder / ledger.file_name(row(f"t{i}", float(i))))
    book = ledger.Ledger(tmp_path, segment_rows=2)
    assert len(book.tail) == 5
    rows = [{**r, "source_hash": f"{r['trial_id']}-hash"} for r in ledger.read_table(tmp_path).to_pylist()]
    book.rewrite(rows)
    assert [p.name for p in ledger.ledger_files(tmp_path)] == [f"segment-00000{i}.parquet" for i in (1, 2, 3)]
    frame = ledger.read(tmp_path)
    assert frame["source_hash"].tolist() == [f"t{i}-hash" for i in range(5)] and list(frame.columns) == list(
        ledger.COLUMNS)


KILLED_FOLD = """
import os, sys
from pathlib import Path
from orchestrator import ledger
book = ledger.Ledger(sys.argv[1], segment_rows=3)
book.append({"trial_id": "t0", "status": "ok", "finished_at": 0.0})
book.append({"trial_id": "t1", "status": "ok", "finished_at": 1.0})
real_unlink = Path.unlink
def unlink(self, missing_ok=False):                     # SIGKILL at the first tail file the fold removes
    if not self.name.startswith("."):
        os.kill(os.getpid(), 9)
    real_unlink(self, missing_ok)
Path.unlink = unlink
book.append({"trial_id": "t2", "status": "ok", "finished_at": 2.0})
"""

KILLED_WRITE = """
import os, sys
from orchestrator import ledger
book = ledger.Ledger(sys.argv[1], segment_rows=3)
book.append({"trial_id": "t3", "status": "ok", "finished_at": 3.0})
os.replace = lambda *args: os.kill(os.getpid(), 9)                    # SIGKILL before a tail file's rename
book.append({"trial_id": "t4", "status": "ok", "finished_at": 4.0})
"""


def test_a_kill_during_a_fold_or_a_write_loses_no_row(tmp_path):
    for child in (KILLED_FOLD, KILLED_WRITE):
        done = subprocess.run([sys.executable, "-c", child, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == -9, done.stderr
        if child is KILLED_FOLD:                          # the segment is in place, its tail files too: twins
            assert len(pd.read_parquet(tmp_path / "ledger")) == 6
            assert ledger.read(tmp_path)["trial_id"].tolist() == ["t0", "t1", "t2"]
    assert ledger.read(tmp_path)["trial_id"].tolist() == ["t0", "t1", "t2", "t3"]   # t4's finish never returned
    book = ledger.Ledger(tmp_path, segment_rows=3)        # the next open removes the twins and the temp file
    assert [p.name for p in ledger.ledger_files(tmp_path)] == [ledger.file_name(row("t3", 3.0)),
                                                               "segment-000001.parquet"]
    assert not list((tmp_path / "ledger").glob(".*")) and book.ids == {"t0", "t1", "t2", "t3"}
    assert sorted(pd.read_parquet(tmp_path / "ledger")["trial_id"]) == ["t0", "t1", "t2", "t3"]
