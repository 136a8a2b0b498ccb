"""`popsearch status`: driver, members with heads and val_bpb, trial counts, noise, pending trials, ledger health.

Head scores, σ and margins from the population state (replayed from the driver's last state snapshot), counts
from five ledger columns, the rest from the archive's refs: no whole ledger row is read but those after the
snapshot, and neither pandas nor matplotlib is loaded. The text helpers (seed, margin, noise, segment) are the
report's too."""
from __future__ import annotations

import math
import statistics
import time

from orchestrator import config_change, ledger
from orchestrator.archive import SHORT, Archive, LineageEntry, lock_holder
from orchestrator.config import Config, from_dict
from orchestrator.population import (BASELINE, Scores, head_key, head_score, key_segment, margins, rule_of,
                                     source_hash)
from orchestrator.replay import replay

COLUMNS = ("member", "head", "head_val_bpb", "best_val_bpb", "trials", "promotions", "status", "forked_from")


def archive_config(archive_dir) -> Config:
    """The archive's config.yaml (the defaults when it has none)."""
    saved = config_change.saved_settings(archive_dir)
    return Config() if saved is None else from_dict(saved)


# ---- text shared with the report --------------------------------------------------------------------

def baseline_text(runs: list[float]) -> str:
    if not runs:
        return "no seed runs yet"
    spread = statistics.stdev(runs) if len(runs) >= 2 else float("nan")
    return f"{statistics.fmean(runs):.4f} ± {spread:.4f} (mean ± std of {len(runs)} runs)"


def best_member(head_scores: dict, head_segments: dict, segment: int) -> str | None:
    """The member whose head scores lowest, among heads scored in this segment if any is (a head scored in an
    earlier segment is never ranked against one scored now); None when no head is judged."""
    judged = {m: v for m, v in head_scores.items() if v is not None and v == v}
    current = {m: v for m, v in judged.items() if head_segments.get(m, segment) == segment}
    judged = current or judged
    return min(judged, key=lambda m: (judged[m], m)) if judged else None


def margin_of(scores: Scores, member: str | None, head_hash: str, rule) -> tuple[float | None, str]:
    """(margin, what it is): how far below `member`'s head one run must land to be promoted, by
    population.margins (the driver's own rule); None before a head is judged or σ is known."""
    if member is None:
        return None, "none yet (no judged head)"
    by_kind = margins(scores, head_hash, rule)
    if not by_kind:
        return None, "none yet (σ unknown: no train.py run twice)"
    kind = sorted(by_kind)[0]
    return by_kind[kind], f"one run below {member}'s head on {kind or 'its device'} is promoted"


def margin_text(margin: float | None, source: str) -> str:
    if margin == math.inf:
        return f"none: one run cannot promote yet, σ rests on too few dof ({source})"
    return source if margin is None else f"{margin:.4f} ({source})"


def noise_text(scores: Scores) -> str:
    """σ of one run on each device kind and budget, pooled over every train.py run more than once there: the
    Scores.noise_table that the verdicts and margins use."""
    known = {key: n for key, n in sorted(scores.noise_table().items()) if n.sigma is not None}
    if not known:
        return "not measured yet (no train.py run twice)"
    return "; ".join(f"{device or 'device'} at {budget:g} s: ±{n.sigma:.4f} (dof {n.dof}, {n.sources} source(s))"
                     for (device, budget), n in known.items())


def prior_text(scores: Scores, rule) -> str:
    """The prior over edit effects the verdicts use now: the default, or its fit to the recorded verdicts."""
    return scores.prior(rule).describe()


def segment_text(segment: int, history: list) -> str:
    """The current score segment and the accepted config changes that started it."""
    if not history:
        return "segment 0 (the archive's config never changed)"
    last = [e for e in history if e.get("new_segment")]
    if not last:
        return f"segment 0; {len(history)} accepted config change(s), none of what a score means"
    changes = ", ".join(f"{c['key']}: {c['old']} -> {c['new']}" for c in last[-1]["changes"])
    return (f"segment {segment} since trial {last[-1].get('from_trial')} ({changes}); scores of earlier "
            f"segments are never compared with it")


def elapsed(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# ---- what status and the report read of an archive ----------------------------------------------------------

def full_lineage(archive) -> list[LineageEntry]:
    """The lineage, plus every living or retired member it lacks (an archive older than the lineage ref)."""
    lineage = archive.lineage()
    known = {e.member for e in lineage}
    return lineage + [LineageEntry(m, None, float("nan"), None)
                      for m in sorted({*archive.heads(), *archive.retired()} - known)]


def head_hashes(archive) -> dict:
    """{member: source hash of its head}, retired members' last heads included."""
    return {m: source_hash(archive.source(sha)) for m, sha in {**archive.retired(), **archive.heads()}.items()}


def pending_since(archive, pending) -> dict:
    """{trial id: time its pending commit was made} of the pending trials."""
    return {p.trial_id: float(archive.repo.commit(p.sha).committed_date) for p in pending}


# ---- the status -----------------------------------------------------------------------------------------

COUNTED = ["member", "proposer", "status", "promoted", "val_bpb"]      # the ledger columns status reads


def member_counts(rows: dict) -> dict:
    """{member: [trials, promotions, best ok val_bpb]} over the candidates (seed runs aside) of column lists."""
    out: dict = {}
    for member, proposer, status, promoted, value in zip(*(rows[c] for c in COUNTED)):
        if proposer == BASELINE:
            continue
        mine = out.get(member)
        if mine is None:
            mine = out[member] = [0, 0, None]
        mine[0] += 1
        if promoted:
            mine[1] += 1
        if status == "ok" and value is not None and value == value and (mine[2] is None or value < mine[2]):
            mine[2] = value                  # value == value: not NaN
    return out


def board_rows(scores: Scores, counts: dict, heads: dict, retired: dict, members: list, forked: dict,
               head_hashes: dict, segment: int) -> list[dict]:
    """One row per member, by head score (heads scored in an earlier segment after this segment's); trials,
    promotions and best_val_bpb over its candidates in the ledger (member_counts)."""
    rows = []
    for member in members:
        h = head_hashes.get(member)
        key = head_key(scores, h) if h else None
        trials, promotions, best = counts.get(member, (0, 0, None))
        rows.append({"member": member, "head": (heads.get(member) or retired.get(member, ""))[:SHORT],
                     "head_val_bpb": head_score(scores, h) if h else None,
                     "head_segment": None if key is None else key_segment(key, segment),
                     "best_val_bpb": best, "trials": trials, "promotions": promotions,
                     "status": "alive" if member in heads else "retired", "forked_from": forked.get(member) or ""})

    def order(row):
        earlier = row["head_segment"] is not None and row["head_segment"] != segment
        return earlier, row["head_val_bpb"] is None, row["head_val_bpb"] or 0.0, row["member"]
    return sorted(rows, key=order)


def table_text(rows: list[dict], columns) -> str:
    """Right-aligned columns, floats to 4 places, '-' for missing."""
    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in [list(columns), *cells])


def status_text(archive_dir) -> str:
    with Archive(archive_dir, writer=False) as archive:
        path = archive.path
        cfg = archive_config(path)
        segment = config_change.current_segment(path)
        state = replay(archive, cfg.seed, segment)
        heads, retired, lineage = archive.heads(), archive.retired(), full_lineage(archive)
        hashes = head_hashes(archive)
        pending = archive.pending()
        since = pending_since(archive, pending)
        imported = archive.imported()
        missing = archive.missing_from_ledger()
        kept_out = archive.records_of(missing)             # rows a kill kept out of the ledger, from trailers
    columns = ledger.read_columns(path, COUNTED)
    for row in kept_out:
        for name in columns:
            columns[name].append(row.get(name))
    rows = board_rows(state.scores, member_counts(columns), heads, retired, [e.member for e in lineage],
                      {e.member: e.forked_from for e in lineage}, hashes, segment)
    scored = {r["member"]: r["head_val_bpb"] for r in rows}
    best = best_member(scored, {r["member"]: r["head_segment"] for r in rows if r["head_segment"] is not None},
                       segment)
    rule = rule_of(cfg.selection)
    margin = margin_of(state.scores, best, hashes.get(best, ""), rule)
    statuses: dict = {}
    for status in columns["status"]:
        statuses[status or "unknown"] = statuses.get(status or "unknown", 0) + 1
    counts = sorted(statuses.items(), key=lambda kv: (-kv[1], kv[0]))
    promoted = sum(bool(p) for p in columns["promoted"])
    ledger_rows = len(columns["trial_id"]) - len(kept_out)
    pid = lock_holder(path)
    lines = [f"archive {path}", f"driver: {'running (pid %d)' % pid if pid else 'not running'}",
             f"members: {len(heads)} alive, {len(retired)} retired; trials: {len(columns['trial_id'])} judged "
             f"({', '.join(f'{s} {n}' for s, n in counts) or 'none'}), {promoted} promoted",
             f"seed: {baseline_text([v for dev in sorted(state.baseline) for v in state.baseline[dev]])}; "
             f"margin {margin_text(*margin)}",
             f"noise: {noise_text(state.scores)}", f"edit effects: {prior_text(state.scores, rule)}",
             segment_text(segment, config_change.history(path)), ""]
    columns = list(COLUMNS)
    if segment:                                        # which heads are scored in this segment, which not yet
        columns.insert(3, "head_segment")
    lines += [table_text(rows, columns), ""]
    lines.append(f"pending: {len(pending)}" + (" (queued or running)" if pending else ""))
    now = time.time()
    for pend in pending:
        subject = pend.message.splitlines()[0] if pend.message else ""
        age = elapsed(max(0.0, now - since[pend.trial_id]))
        lines.append(f"  {pend.trial_id}  {pend.member or '-'}  {pend.proposer}  {subject}  ({age} ago)")
    if imported:
        from orchestrator.adopt import history_lines
        lines += ["imported history (the adopted project's own val_bpb, never compared):", "",
                  *("    " + line for line in history_lines(imported)), ""]
    lines.append(f"ledger: {ledger_rows} rows" if not missing else
                 f"ledger: {ledger_rows} rows; {len(missing)} judged trials missing from it "
                 f"(run `popsearch repair {path}`)")
    return "\n".join(lines) + "\n"
