"""The parquet ledger on real files: schema and types, atomic appends, corrupt files, rebuild without losses.

No git here: the ledger is a folder of parquet files that pandas reads as a whole."""
from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator import ledger


def row(trial_id, finished_at, **extra):
    return {"trial_id": trial_id, "member": "a", "status": "ok", "val_bpb": 1.5, "finished_at": finished_at, **extra}


def test_append_and_read_keep_types_and_order(tmp_path):
    ledger.append(tmp_path, row("t2", 200.0, tokens=1000, promoted=True, message="two\nlines"))
    ledger.append(tmp_path, row("t1", 100.0, val_bpb=None, status="crash", reason="boom"))
    ledger.append(tmp_path, row("t3", None))
    frame = ledger.read(tmp_path)
    assert frame["trial_id"].tolist() == ["t1", "t2", "t3"]           # by finished_at, missing last
    assert list(frame.columns) == list(ledger.COLUMNS)
    assert frame["val_bpb"].dtype == "float64" and pd.isna(frame.loc[0, "val_bpb"])
    assert frame.loc[1, "tokens"] == 1000 and frame.loc[1, "message"] == "two\nlines"
    assert pd.isna(frame.loc[0, "commit"]) and pd.isna(frame.loc[0, "tokens"])
    for path in ledger.ledger_files(tmp_path):
        assert pq.read_schema(path).remove_metadata().equals(ledger.SCHEMA)
    whole = pd.read_parquet(tmp_path / "ledger")
    assert sorted(whole["trial_id"]) == ["t1", "t2", "t3"]
    assert ledger.trial_ids(tmp_path) == {"t1", "t2", "t3"}


def test_empty_ledger_reads_as_empty_frame(tmp_path):
    frame = ledger.read(tmp_path)
    assert frame.empty and list(frame.columns) == list(ledger.COLUMNS)
    assert ledger.trial_ids(tmp_path) == set()


def test_bad_rows_are_refused_with_names(tmp_path):
    with pytest.raises(ValueError, match="unknown columns: bogus, val_bbp"):
        ledger.append(tmp_path, row("t1", 1.0, val_bbp=1.0, bogus=2))
    with pytest.raises(ValueError, match="'tokens' expects int64"):
        ledger.append(tmp_path, row("t1", 1.0, tokens="many"))
    with pytest.raises(ValueError, match="status 'great'"):
        ledger.append(tmp_path, row("t1", 1.0, status="great"))
    with pytest.raises(ValueError, match="trial_id '../x'"):
        ledger.append(tmp_path, row("../x", 1.0))
    ledger.append(tmp_path, row("t1", 1.0))
    with pytest.raises(ValueError, match="t1 is already in the ledger"):
        ledger.append(tmp_path, row("t1", 2.0))
    assert len(ledger.read(tmp_path)) == 1


def test_leftover_temp_file_is_ignored(tmp_path):
    ledger.append(tmp_path, row("t1", 1.0))
    folder = tmp_path / "ledger"
    (folder / ".000000000002000-t2.parquet.999.tmp").write_bytes(b"PAR1 half a write")
    (folder / "_scratch.parquet").write_bytes(b"junk")
    assert ledger.read(tmp_path)["trial_id"].tolist() == ["t1"]
    assert pd.read_parquet(folder)["trial_id"].tolist() == ["t1"]
    assert ledger.trial_ids(tmp_path) == {"t1"}


def test_truncated_file_names_itself_and_the_repair_command(tmp_path):
    ledger.append(tmp_path, row("t1", 1.0))
    bad = ledger.append(tmp_path, row("t2", 2.0))
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(ledger.LedgerError, match=f"{bad.name}.*popsearch repair {tmp_path}"):
        ledger.read(tmp_path)


def test_rebuild_loses_nothing(tmp_path):
    ledger.append(tmp_path, row("t1", 1.0))
    stale = ledger.append(tmp_path, row("t2", 2.0, val_bpb=9.9))
    extra = ledger.append(tmp_path, row("t9", 9.0))
    corrupt = ledger.append(tmp_path, row("t3", 3.0))
    corrupt.write_bytes(b"not parquet")
    truth = [row("t1", 1.0), row("t2", 2.0), row("t3", 3.0), row("t4", 4.0)]
    report = ledger.rebuild(tmp_path, truth)
    assert report["kept"] == ["t1"] and sorted(report["written"]) == ["t2", "t3", "t4"]
    assert report["carried"] == ["t9"]                    # readable rows that the truth lacks stay
    frame = ledger.read(tmp_path).set_index("trial_id")
    assert list(frame.index) == ["t1", "t2", "t3", "t4", "t9"] and frame.loc["t2", "val_bpb"] == 1.5
    backup = tmp_path / report["backup"]
    assert backup.name.startswith(ledger.BACKUP_PREFIX)
    assert sorted(p.name for p in backup.iterdir()) == sorted([stale.name, corrupt.name])
    assert (backup / corrupt.name).read_bytes() == b"not parquet"
    assert extra.exists()
    again = ledger.rebuild(tmp_path, truth)
    assert again["written"] == [] and again["moved"] == [] and again["backup"] is None
