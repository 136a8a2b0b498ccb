"""history.md, the record an agent learns from: the head, the rule, the member's trials with diffs, work in flight.

format_history is pure (plain dicts and numbers in, bounded markdown out); the driver gathers its inputs."""
from __future__ import annotations

import difflib
import math
import statistics
from dataclasses import dataclass, field

MAX_CHARS = 48_000               # whole history.md; sections are cut newest-first to stay under it
DIFF_LINES = 60                  # of one diff; longer diffs end with a note of what was cut
LOG_TAIL_LINES = 15              # of a crash's or timeout's log tail
TRIALS_SHOWN = 12                # newest trials with their diff
OTHERS_SHOWN = 3                 # best other members' heads
IMPORTED_SHOWN = 40              # newest entries of an adopted project's own history (orchestrator/adopt.py)
IMPORTED_NOTE = ("Its commits and results.tsv rows from before popsearch; their val_bpb is its own evaluation (other "
                 "data, another judge): imported, never compared with popsearch's scores.")
CELL_CHARS = 300                 # of a reason, message or verdict line
TAIL_STATUSES = ("crash", "timeout")


@dataclass
class HistoryInputs:
    """What the driver knows when an agent starts on `member` (all plain data)."""
    member: str
    head_score: float | None = None
    head_runs: dict = field(default_factory=dict)       # device kind -> [val_bpb of the head's runs]
    noise: dict = field(default_factory=dict)           # device kind -> [val_bpb of the seed's noise runs]
    margins: dict = field(default_factory=dict)         # device kind -> promotion margin now
    rule: str = ""                                       # the verdict rule in one or two sentences
    trials: list = field(default_factory=list)          # ledger rows of the member, oldest first, each with 'diff'
    in_flight: list = field(default_factory=list)       # {trial_id, proposer, message, diff} on this member
    others: list = field(default_factory=list)          # {member, head_score, diff} best first
    imported: list = field(default_factory=list)        # an adopted project's history, adopt.history_lines


def unified_diff(old: str, new: str, name: str = "train.py", lines: int = DIFF_LINES) -> str:
    """A unified diff of two sources, cut to `lines` lines ('' when they are equal)."""
    diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"a/{name}", f"b/{name}", lineterm="", n=2))
    if len(diff) > lines:
        diff = diff[:lines] + [f"... ({len(diff) - lines} more diff lines cut)"]
    return "\n".join(diff)


def _text(value) -> str:
    """'' for missing values (None, NaN from a parquet ledger), else the value as text."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _short(value, chars: int = CELL_CHARS) -> str:
    text = " ".join(_text(value).split())
    return text if len(text) <= chars else text[:chars - 3] + "..."


def _score(value) -> str:
    return f"{value:.6f}" if isinstance(value, (int, float)) and value == value else "not judged"


def _head_section(h: HistoryInputs) -> list[str]:
    lines = [f"# History of member {h.member}", "", "## Head", ""]
    if h.head_score is None:
        lines.append("Head val_bpb: not judged yet (the seed's runs are still training; lower is better).")
    else:
        lines.append(f"Head val_bpb: {h.head_score:.6f} (lower is better).")
    for device, runs in sorted(h.head_runs.items()):
        lines.append(f"- runs on {device or 'an unrecorded device'}: " + ", ".join(f"{v:.6f}" for v in runs))
    for device, runs in sorted(h.noise.items()):
        if len(runs) >= 2:
            lines.append(f"- noise on {device}: seed runs {min(runs):.6f} .. {max(runs):.6f}, "
                         f"std {statistics.stdev(runs):.6f} over {len(runs)} runs")
        elif runs:
            lines.append(f"- noise on {device}: 1 seed run ({runs[0]:.6f}), no spread yet")
    return lines + [""]


def _rule_section(h: HistoryInputs) -> list[str]:
    lines = ["## The rule", "", h.rule or "Promote when clearly better than the head; see program.md.", ""]
    if h.margins:
        lines += [f"- margin on {d}: none yet (sigma rests on too few runs for one run to promote)"
                  if m == math.inf else f"- margin on {d}: {m:.6f}" + (f" (promote below {h.head_score - m:.6f})"
                                                                      if h.head_score is not None else "")
                  for d, m in sorted(h.margins.items())]
    else:
        lines.append("- margin: not measured yet (the seed's noise runs have not finished)")
    return lines + [""]


def _trial_block(r: dict) -> str:
    lines = [f"### {_text(r.get('trial_id'))} ({_text(r.get('proposer'))}): {_text(r.get('status'))}, "
             f"verdict {_text(r.get('verdict')) or '-'}, val_bpb {_score(r.get('val_bpb'))}"]
    for label, key in (("idea", "message"), ("decided by", "decided_by"), ("reason", "reason")):
        if _text(r.get(key)).strip():
            lines.append(f"- {label}: {_short(r.get(key))}")
    tail = _text(r.get("log_tail")).strip()
    if r.get("status") in TAIL_STATUSES and tail:
        lines += ["- log tail:", "```", *tail.splitlines()[-LOG_TAIL_LINES:], "```"]
    diff = _text(r.get("diff"))
    lines += ["```diff", diff, "```"] if diff else ["- (no change against its parent)"]
    return "\n".join(lines)


def _in_flight_block(j: dict) -> str:
    head = f"### {_text(j.get('trial_id')) or 'agent'} ({_text(j.get('proposer'))}): {_short(j.get('message'))}"
    diff = _text(j.get("diff"))
    return head + ("\n```diff\n" + diff + "\n```" if diff else "\n- (still being written)")


def _other_block(o: dict) -> str:
    head = f"### {o['member']}: head val_bpb {_score(o.get('head_score'))}"
    diff = _text(o.get("diff"))
    return head + ("\n```diff\n" + diff + "\n```" if diff else "\n- (same train.py as yours)")


def _fit(title: str, note: str, blocks: list[str], room: int) -> tuple[list[str], int]:
    """The section with as many blocks (given newest or best first) as fit in `room` characters."""
    lines, used = [title, "", note, ""], len(title) + len(note) + 4
    kept = 0
    for block in blocks:
        if used + len(block) + 2 > room:
            break
        lines += [block, ""]
        used += len(block) + 2
        kept += 1
    if kept < len(blocks):
        lines += [f"({len(blocks) - kept} older entries left out to keep this file under {MAX_CHARS} characters)", ""]
    return lines, used


def format_history(h: HistoryInputs, max_chars: int = MAX_CHARS) -> str:
    """history.md: head and noise, the rule and its threshold, candidates in flight, the member's newest trials
    with their diffs, an adopted project's own history, and the best other heads; at most max_chars characters,
    newest first where cut."""
    lines = _head_section(h) + _rule_section(h)
    room = max_chars - sum(len(x) + 1 for x in lines)
    flight = [_in_flight_block(j) for j in h.in_flight]
    part, used = _fit("## In flight on this member (do not repeat these)",
                      f"{len(flight)} candidate(s) proposed and not judged yet." if flight else "None.", flight, room // 3)
    lines, room = lines + part, room - used
    trials = [_trial_block(r) for r in reversed(h.trials[-TRIALS_SHOWN:])]
    note = (f"{len(h.trials)} trial(s) so far, newest first (the last {min(len(h.trials), TRIALS_SHOWN)} shown)."
            if h.trials else "No trials yet.")
    part, used = _fit("## This member's trials", note, trials, room * 3 // 4)
    lines, room = lines + part, room - used
    if h.imported:
        imported = ["- " + _short(line) for line in reversed(h.imported[-IMPORTED_SHOWN:])]
        note = f"{len(h.imported)} entries, newest first (the last {len(imported)} shown). {IMPORTED_NOTE}"
        part, used = _fit("## Imported history (the adopted project's)", note, imported, room // 2)
        lines, room = lines + part, room - used
    others = [_other_block(o) for o in h.others[:OTHERS_SHOWN]]
    part, _ = _fit("## The best other members (their head against yours)",
                   "Ideas that worked elsewhere." if others else "No other member has a judged head.", others, room)
    return "\n".join(lines + part).rstrip() + "\n"
