"""ARCHIVE/journal.jsonl: the population's append-only event journal, one fsynced JSON line per event.

What the archive's records cannot say: the runs of trials not judged yet, the order trials were recorded in,
and the culls; O(1) per line (one file, appended), a line torn by a kill is skipped on reading."""
from __future__ import annotations

import json
import os
from pathlib import Path

JOURNAL_FILE = "journal.jsonl"


def journal_path(archive_dir) -> Path:
    return Path(archive_dir) / JOURNAL_FILE


def read(archive_dir, offset: int = 0) -> list[dict]:
    """Every whole line of the journal from byte `offset` (a line start), in order; a torn or unreadable line
    (a kill mid-write) is skipped."""
    path = journal_path(archive_dir)
    if not path.exists():
        return []
    with path.open("rb") as handle:
        handle.seek(offset)
        return list(_events(handle))


def first(archive_dir) -> dict | None:
    """The journal's first whole line (None for an empty or missing journal), without reading the rest."""
    path = journal_path(archive_dir)
    if not path.exists():
        return None
    with path.open("rb") as handle:
        return next(_events(handle), None)


def _events(handle):
    """The whole event lines of an open journal from where it stands; torn or unreadable lines skipped."""
    for raw in handle:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event"):
            yield line


class Journal:
    """The writer: one open file, each line written whole and fsynced before append() returns."""

    def __init__(self, archive_dir):
        self.path = journal_path(archive_dir)
        self.handle = self.path.open("ab")
        if self.handle.tell() and not self._ends_with_newline():
            self.handle.write(b"\n")          # a torn last line stays a line of its own, skipped on reading

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as tail:
            tail.seek(-1, os.SEEK_END)
            return tail.read(1) == b"\n"

    def append(self, line: dict) -> None:
        data = json.dumps(line, separators=(",", ":"), default=str).encode("utf-8") + b"\n"
        self.handle.write(data)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def size(self) -> int:
        """Bytes written so far: the position after the last whole line."""
        return self.handle.tell()

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()
