"""Repair of an archive after a kill: finish every interrupted write, then make the ledger match the trailers.

Each step is idempotent: stale git locks, the lineage journal, lost promotions, pending refs of judged trials."""
from __future__ import annotations

import time
from pathlib import Path

from orchestrator import ledger
from orchestrator.archive import BRANCHES, PENDING, SHORT, TRIALS, ZERO_SHA, Archive

STALE_GIT_LOCK_SECONDS = 10.0              # a git *.lock older than this is left over from a killed write


def repair_archive(archive: Archive) -> dict:
    """Finish every write a kill interrupted, then make the ledger match the trailers. Idempotent."""
    archive._writable()
    entries, problems = archive._trial_entries()
    report = {"git_locks": _clear_stale_git_locks(archive), "lineage": _replay_lineage(archive),
              "promotions": _replay_promotions(archive, entries), "pending_dropped": _drop_judged_pending(archive),
              "unreadable_trials": problems}
    report["ledger"] = ledger.rebuild(archive.path, [row for row, _ in entries])
    return report


def _clear_stale_git_locks(archive: Archive) -> list[str]:
    """Ref lock files a killed git left behind (no ref name of ours ends in .lock)."""
    git_dir = Path(archive.repo.git_dir)
    candidates = [*(git_dir / "refs").rglob("*.lock"), git_dir / "packed-refs.lock", git_dir / "HEAD.lock",
                  git_dir / "index.lock"]
    cutoff = time.time() - STALE_GIT_LOCK_SECONDS
    removed = [p for p in candidates if p.is_file() and p.stat().st_mtime < cutoff]
    for path in removed:
        path.unlink()
    return [str(p) for p in removed]


def _replay_lineage(archive: Archive) -> list[str]:
    """Create branches the journal says exist, finish retirements the journal says happened."""
    heads, retired, done = archive.heads(), archive.retired(), []
    for event in archive._events():
        member, kind = event.get("Member", ""), event.get("Event")
        if kind in ("create", "fork") and member not in heads and member not in retired:
            archive._update_ref(BRANCHES + member, event["At"], ZERO_SHA)
            heads[member] = event["At"]
            done.append(f"created pop/{member} at {event['At'][:SHORT]}")
        elif kind == "retire" and member in heads:
            archive._finish_retire(member, heads[member])
            retired[member] = heads.pop(member)
            done.append(f"retired {member}")
    return done


def _replay_promotions(archive: Archive, entries: list[tuple[dict, dict]]) -> list[str]:
    """Move a branch that still sits on a promoted trial's Head-Before to that trial (chains included)."""
    promoted = [(row, tr) for row, tr in entries if tr.get("Promoted") == "yes" and tr.get("Head-Before")]
    heads, done = archive.heads(), []
    for _ in range(len(promoted)):
        moves = [(row, tr) for row, tr in promoted
                 if heads.get(row["member"]) == tr["Head-Before"] != row["commit"]]
        if not moves:
            break
        row, tr = moves[0]
        archive._move_branch(row["member"], row["commit"], tr["Head-Before"])
        heads[row["member"]] = row["commit"]
        done.append(f"pop/{row['member']} -> {row['commit'][:SHORT]} (trial {row['trial_id']})")
    return done


def _drop_judged_pending(archive: Archive) -> list[str]:
    judged = set(archive._refs(TRIALS))
    dropped = [trial_id for trial_id in archive._refs(PENDING) if trial_id in judged]
    for trial_id in dropped:
        archive._drop_pending(trial_id)
    return dropped
