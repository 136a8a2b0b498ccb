"""Commit messages of the archive: a free-text message, a blank line, then `Key: value` trailers.

Builds pending and judged trailers, parses them back, completes a judged trial's ledger row (never imports the archive)."""
from __future__ import annotations

import json
import re
from typing import NamedTuple

from orchestrator import ledger

TRAILER_CHARS = 300                        # readable trailers are cut here; Record keeps everything


class Pending(NamedTuple):
    """A proposed candidate, as its pending commit's trailers say (orchestrator.archive re-exports it)."""
    trial_id: str
    sha: str
    member: str
    parent: str
    proposer: str
    message: str


def _one_line(value, limit: int = TRAILER_CHARS) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compose_message(message: str, trailers: list[tuple[str, object]]) -> str:
    """The message, a blank line, then `Key: value` trailers (empty values left out)."""
    lines = [f"{key}: {value if key == 'Record' else _one_line(value)}"
             for key, value in trailers if value is not None and value != ""]
    return (message.strip() or "(no message)") + "\n\n" + "\n".join(lines) + "\n"


def parse_message(text: str) -> tuple[str, dict]:
    """(message, trailers) of a commit message whose last paragraph is `Key: value` lines."""
    text = text.strip()
    body, _, block = text.rpartition("\n\n")
    pairs = [line.split(": ", 1) for line in block.splitlines()]
    if body and pairs and all(len(p) == 2 and re.fullmatch(r"[A-Za-z][A-Za-z-]*", p[0]) for p in pairs):
        return body, dict(pairs)
    return text, {}


def pending_trailers(trial_id, member, parent, proposer) -> list[tuple[str, object]]:
    return [("Trial-Id", trial_id), ("Member", member), ("Parent", parent),
            ("Proposer", proposer), ("Status", "pending")]


def judged_trailers(row: dict, head_before: str | None) -> list[tuple[str, object]]:
    record = {k: v for k, v in row.items() if k != "commit" and v is not None}
    return [("Trial-Id", row["trial_id"]), ("Member", row["member"]), ("Parent", row["parent_commit"]),
            ("Proposer", row["proposer"]), ("Status", row["status"]), ("Val-Bpb", row["val_bpb"]),
            ("Verdict", row["verdict"]), ("Device", row["device"]), ("Budget", row["budget_seconds"]),
            ("Margin", row["margin"]), ("Runs", row["runs"]), ("Decided-By", row["decided_by"]),
            ("Reason", row["reason"]), ("Promoted", "yes" if row["promoted"] else "no"),
            ("Head-Before", head_before), ("Record", json.dumps(record, separators=(",", ":")))]


def completed_row(pend: Pending, row: dict, promote: bool) -> dict:
    """The ledger row of a judged trial: the caller's fields plus what the pending candidate fixes."""
    full = dict(row)
    fixed = {"trial_id": pend.trial_id, "member": pend.member, "parent_commit": pend.parent,
             "proposer": pend.proposer}
    for key, value in fixed.items():
        if full.get(key) not in (None, value):
            raise ValueError(f"trial {pend.trial_id}: row {key}={full[key]!r} disagrees with the pending "
                             f"candidate ({value!r})")
        full[key] = value
    if full.get("commit") is not None:
        raise ValueError(f"trial {pend.trial_id}: row['commit'] is set by record(), leave it out")
    if not full.get("message"):
        full["message"] = pend.message
    full["promoted"] = bool(promote)
    full = ledger.normalize(full)
    if full["status"] is None:
        raise ValueError(f"trial {pend.trial_id}: the row needs a status")
    if promote and full["status"] != "ok":
        raise ValueError(f"trial {pend.trial_id} has status {full['status']!r}; only an ok trial can be promoted")
    return full
