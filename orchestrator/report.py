"""Reports in ARCHIVE/report/ (leaderboard.tsv, progress.png, lineage.svg, summary.md) and `popsearch status` text.

Read from the archive's refs and trailers; head scores, margins and σ by the population's own rules (population.py)."""
from __future__ import annotations

import datetime
import html
import os
import statistics
import time
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from judge.verdict import Rule
from orchestrator import config_change, ledger
from orchestrator.archive import IMPORTED_TRAILER, SHORT, Archive, LineageEntry, Pending
from orchestrator.cost import cost_table
from orchestrator.population import BASELINE, Scores, head_key, head_score, key_segment, rule_of, run_scores
from orchestrator.replay import replay
from orchestrator.status import (archive_config, baseline_text, best_member, elapsed, full_lineage, head_hashes,
                                 margin_of, margin_text, noise_text, pending_since, prior_text, segment_text)

REPORT_DIR = "report"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LEADERBOARD_COLUMNS = ("member", "head", "head_val_bpb", "head_segment", "best_val_bpb", "trials", "promotions",
                       "last_improvement", "status", "forked_from")
PNG_SIZE, PNG_DPI = (10, 5.5), 110
CLIP_QUANTILE = 0.9          # the plot's top edge: this quantile plus its distance to the best (outliers sit on it)
SEED_COLOR, FAILED_COLOR = "black", "#d62728"
SVG_WIDTH, SVG_LABEL_WIDTH, SVG_LANE, SVG_TOP, SVG_BOTTOM, SVG_RIGHT = 960, 130, 36, 40, 50, 30
IMPORTED_COLOR, IMPORTED_STEP = "#777", 14    # lineage.svg's imported lane: its colour, its marks' widest spacing


class Snapshot(NamedTuple):
    """What the archive says now."""
    path: Path
    trials: pd.DataFrame                 # trial records (ledger columns), by finish time
    heads: dict[str, str]
    retired: dict[str, str]
    lineage: list[LineageEntry]
    pending: list[Pending]
    pending_since: dict[str, float]      # trial id -> time the candidate was proposed
    head_scores: dict[str, float | None]  # member -> its head's score by population.head_score
    baseline: list[float]                # val_bpb of every run of the seed (proposer "baseline")
    imported: list = []                  # an adopted project's history (Archive.imported), never compared
    scores: Scores | None = None         # the scores the population state holds (orchestrator.replay)
    head_hashes: dict = {}               # member -> source_hash of its head
    rule: Rule | None = None             # the verdict rule of the archive's config.yaml
    segment: int = 0                     # the current score segment (config_change.py)
    config_history: list = []            # accepted config changes (ARCHIVE/config_history.jsonl)
    head_segments: dict = {}             # member -> the score segment its head score comes from


def baseline_scores(records: list[dict]) -> list[float]:
    return [v for r in records if r["proposer"] == BASELINE for v in run_scores(r)]


def archive_rule(archive_dir) -> Rule:
    """The verdict rule of the archive's config.yaml."""
    return rule_of(archive_config(archive_dir).selection)


def snapshot(archive_dir) -> Snapshot:
    with Archive(archive_dir, writer=False) as archive:
        records = archive.trial_records()
        heads, retired, lineage = archive.heads(), archive.retired(), full_lineage(archive)
        hashes = head_hashes(archive)
        pending = archive.pending()
        since = pending_since(archive, pending)
        path = archive.path
        imported = archive.imported()
        segment = config_change.current_segment(path)
        scores = replay(archive, archive_config(path).seed, segment, records).scores   # the driver's own state
    trials = pd.DataFrame(records, columns=list(ledger.COLUMNS))
    keys = {m: head_key(scores, h) for m, h in hashes.items()}
    return Snapshot(path, trials, heads, retired, lineage, pending, since,
                    {m: head_score(scores, h) for m, h in hashes.items()}, baseline_scores(records), imported,
                    scores, hashes, archive_rule(path), segment, config_change.history(path),
                    {m: key_segment(k, segment) for m, k in keys.items() if k is not None})


def _iso(stamp) -> str:
    if stamp is None or pd.isna(stamp):
        return ""
    return datetime.datetime.fromtimestamp(float(stamp), tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kept(trials: pd.DataFrame) -> pd.Series:
    return trials["promoted"].eq(True)


def _as_head(trials: pd.DataFrame) -> pd.Series:
    """Each row's score as a head, as the population scores a promotion: its posterior (head_score; an earlier
    rule's confirmation runs' mean) where the verdict recorded one, else its val_bpb."""
    score = pd.to_numeric(trials["head_score"], errors="coerce")
    return score.fillna(pd.to_numeric(trials["val_bpb"], errors="coerce"))


def _seed_runs(trials: pd.DataFrame) -> pd.Series:
    return trials["proposer"].eq(BASELINE)


def noise_margin(snap: Snapshot) -> tuple[float | None, str]:
    """(margin, what it is): how far below the best head one run must land to be promoted (see
    status.margin_of); None before any σ is known."""
    best = best_head(snap)
    if best is None or snap.scores is None:
        return None, "none yet (no judged head)"
    return margin_of(snap.scores, best[0], snap.head_hashes[best[0]], snap.rule or archive_rule(snap.path))


def leaderboard(snap: Snapshot) -> pd.DataFrame:
    """One row per member (living and retired), by the val_bpb of its head; best_val_bpb is its best candidate."""
    candidates = snap.trials[~_seed_runs(snap.trials)]
    rows = []
    for entry in snap.lineage:
        member = entry.member
        mine = candidates[candidates["member"] == member]
        kept = mine[_kept(mine)]
        tip = snap.heads.get(member) or snap.retired.get(member, "")
        rows.append({"member": member, "head": tip[:SHORT], "head_val_bpb": snap.head_scores.get(member),
                     "head_segment": snap.head_segments.get(member),
                     "best_val_bpb": mine.loc[mine["status"] == "ok", "val_bpb"].min(),
                     "trials": len(mine), "promotions": len(kept),
                     "last_improvement": _iso(kept["finished_at"].max()) if len(kept) else "",
                     "status": "alive" if member in snap.heads else "retired",
                     "forked_from": entry.forked_from or ""})
    board = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    for column in ("head_val_bpb", "best_val_bpb"):
        board[column] = pd.to_numeric(board[column])
    board["head_segment"] = board["head_segment"].astype("Int64")
    earlier = board["head_segment"].notna() & board["head_segment"].ne(snap.segment)   # listed after this segment's
    board = board.assign(_earlier=earlier).sort_values(["_earlier", "head_val_bpb", "member"], na_position="last")
    return board.drop(columns="_earlier").reset_index(drop=True)


def _colors(snap: Snapshot) -> dict[str, str]:
    return {e.member: PALETTE[i % len(PALETTE)] for i, e in enumerate(snap.lineage)}


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


# ---- progress.png ----------------------------------------------------------------------------------------

def _y_limits(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    if len(values) >= 5:
        q = float(np.quantile(values, CLIP_QUANTILE))
        hi = min(hi, q + (q - lo))
    pad = (hi - lo) * 0.06 or max(abs(lo) * 0.01, 1e-3)
    return lo - pad, hi + pad


def _baseline_mean(snap: Snapshot) -> float | None:
    return statistics.fmean(snap.baseline) if snap.baseline else None


def best_head(snap: Snapshot) -> tuple[str, float, float | None] | None:
    """(member, val_bpb of its head, gain over the seed runs' mean) of the best-judged head; None if none is judged."""
    member = best_member(snap.head_scores, snap.head_segments, snap.segment)
    if member is None:
        return None
    base, score = _baseline_mean(snap), snap.head_scores[member]
    return member, score, None if base is None else base - score


def _score_at(snap: Snapshot, member: str, when: float) -> float | None:
    """A member's head score at time `when`: its last promotion by then, else what it started from."""
    t = snap.trials
    kept = t[_kept(t) & t["member"].eq(member) & t["finished_at"].le(when)]
    if len(kept):
        return float(_as_head(kept).iloc[-1])
    entry = next((e for e in snap.lineage if e.member == member), None)
    if entry is not None and entry.forked_from and entry.created_at < when:
        return _score_at(snap, entry.forked_from, entry.created_at)
    return _baseline_mean(snap)


def _line_start(snap: Snapshot, entry: LineageEntry) -> tuple[float, float | None]:
    """(x, val_bpb) where a member's running best begins: the seed runs' mean at 0, or its parent's head at the fork."""
    if not entry.forked_from:
        return 0.0, _baseline_mean(snap)
    x = float(snap.trials["finished_at"].le(entry.created_at).sum())
    return x, _score_at(snap, entry.forked_from, entry.created_at)


def _plot_member(ax, x, snap, good, entry, color, top) -> Line2D:
    """A member's discarded trials (faint), its promotions (big dots) and its running best (step line)."""
    trials = snap.trials
    mine = good & (trials["member"] == entry.member).to_numpy() & ~_seed_runs(trials).to_numpy()
    kept = mine & _kept(trials).to_numpy()
    y = trials["val_bpb"].to_numpy(dtype=float)
    over = mine & ~kept & (y > top)
    faint = mine & ~kept & ~over
    ax.scatter(x[faint], y[faint], s=16, color=color, alpha=0.35, linewidths=0)
    ax.scatter(x[over], np.full(over.sum(), top), s=22, color=color, alpha=0.5, marker="^", clip_on=False)
    ax.scatter(x[kept], y[kept], s=80, color=color, edgecolors="black", linewidths=0.8, zorder=4)
    x0, y0 = _line_start(snap, entry)
    heads = _as_head(trials).to_numpy(dtype=float)                # the step line: each promotion's head score
    xs, ys = (x[kept], heads[kept]) if y0 is None else (np.insert(x[kept], 0, x0), np.insert(heads[kept], 0, y0))
    if len(xs):
        best = np.minimum.accumulate(ys)
        ax.step(np.append(xs, max(x[-1], xs[-1])), np.append(best, best[-1]), where="post", color=color,
                linewidth=1.6, alpha=0.85, zorder=3, gid=f"best:{entry.member}")
    return Line2D([], [], color=color, marker="o", linewidth=1.6, label=entry.member)


def _plot_seed(ax, x, snap, good) -> list:
    """The seed runs as black x and their mean as a dashed line."""
    seed = good & _seed_runs(snap.trials).to_numpy()
    base = _baseline_mean(snap)
    if not seed.any() or base is None:
        return []
    ax.scatter(x[seed], snap.trials["val_bpb"].to_numpy(dtype=float)[seed], marker="x", color=SEED_COLOR, s=40,
               zorder=4)
    ax.axhline(base, color=SEED_COLOR, linestyle="--", linewidth=1.0, zorder=3.5, gid="seed mean")
    handles = [Line2D([], [], color=SEED_COLOR, marker="x", linestyle="", label=f"seed runs ({seed.sum()})"),
               Line2D([], [], color=SEED_COLOR, linestyle="--", label=f"seed mean {base:.4f}")]
    return handles


def _plot_margin(ax, snap, margin) -> list:
    """The selection margin as a band under the best head's score: where one run must land to clear the test."""
    best = best_head(snap)
    if not margin or best is None:
        return []
    ax.axhspan(best[1] - margin, best[1], color="grey", alpha=0.12, linewidth=0, zorder=1, gid="margin")
    return [Patch(color="grey", alpha=0.25, label=f"selection margin {margin:.4f} under the best head")]


def _plot_failed(ax, x, failed) -> list:
    if not failed.any():
        return []
    at_bottom = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.scatter(x[failed], np.full(failed.sum(), 0.015), transform=at_bottom, marker="|", color=FAILED_COLOR,
               s=60, linewidths=1.2, clip_on=False)
    return [Line2D([], [], color=FAILED_COLOR, marker="|", linestyle="", label=f"failed ({failed.sum()})")]


def _title(snap: Snapshot) -> str:
    trials = snap.trials
    seeds = int(_seed_runs(trials).sum())
    kept = int(_kept(trials).sum())
    runs = f" + {seeds} seed runs" if seeds else ""
    head = f"{snap.path.name}: {len(trials) - seeds} trials{runs}, {kept} promotion{'' if kept == 1 else 's'}"
    best = best_head(snap)
    if best is None:
        return head
    member, score, gain = best
    tail = "" if gain is None else f", gain {gain:+.4f} ({gain / (score + gain):+.1%}) over the seed"
    return f"{head}\nbest val_bpb {score:.4f} ({member}){tail}"


def _plot_trials(ax, x, snap: Snapshot, good) -> list:
    """The judged trials: seed runs and band, then each member; returns the legend handles."""
    y = snap.trials["val_bpb"].to_numpy(dtype=float)
    margin, best = noise_margin(snap)[0], best_head(snap)
    band = [] if best is None else [best[1] - (margin or 0.0), best[1]]
    bottom, top = _y_limits(np.concatenate([y[good], band]))
    ax.set_ylim(bottom, top)
    seed = _plot_seed(ax, x, snap, good) + _plot_margin(ax, snap, margin)
    colors = _colors(snap)
    members = [_plot_member(ax, x, snap, good, e, colors[e.member], top) for e in snap.lineage]
    return members + seed + [
        Line2D([], [], color="grey", marker="o", markersize=9, markeredgecolor="black", linestyle="",
               label="promoted"),
        Line2D([], [], color="grey", marker="o", markersize=4, alpha=0.35, linestyle="", label="discarded")]


def progress_figure(snap: Snapshot) -> Figure:
    """Every trial's val_bpb by finishing order: seed runs and their noise band, promotions, running bests, failures."""
    fig = Figure(figsize=PNG_SIZE, dpi=PNG_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    trials = snap.trials
    x = np.arange(1, len(trials) + 1)
    good = (trials["status"] == "ok").to_numpy() & trials["val_bpb"].notna().to_numpy()
    handles = _plot_trials(ax, x, snap, good) if good.any() else []
    if not good.any():
        ax.text(0.5, 0.5, "no judged trials yet", transform=ax.transAxes, ha="center", va="center")
    handles += _plot_failed(ax, x, ~good)
    ax.set_xlim(left=-0.5, right=max(len(trials), 1) + 0.5)
    ax.set(xlabel="trial (in order of finishing)", ylabel="val_bpb (lower is better)")
    ax.set_title(_title(snap), fontsize=10)
    ax.grid(alpha=0.25)
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.8, top=0.88)
    return fig


def progress_png(snap: Snapshot) -> bytes:
    """progress_figure as PNG bytes, with the archive and its members in the PNG's text chunks."""
    fig = progress_figure(snap)
    out = BytesIO()
    members = ", ".join(e.member for e in snap.lineage)
    fig.savefig(out, format="png", metadata={"Title": f"popsearch progress: {snap.path.name}",
                                             "Description": f"members: {members}"})
    return out.getvalue()


# ---- lineage.svg -----------------------------------------------------------------------------------------

def _time_span(snap: Snapshot) -> tuple[float, float]:
    stamps = [e.created_at for e in snap.lineage] + [e.retired_at for e in snap.lineage if e.retired_at]
    stamps += snap.trials["finished_at"].dropna().tolist()
    stamps = [s for s in stamps if s == s]
    if not stamps:
        return 0.0, 1.0
    return min(stamps), max(max(stamps), min(stamps) + 1.0)


def _elapsed(seconds: float) -> str:
    return "+" + elapsed(seconds)


def _lane_svg(entry: LineageEntry, lanes: dict, color: str, kept: pd.DataFrame, x, t_end: float) -> list[str]:
    """One member's lane: label, life line, fork arrow, promotions as dots, retirement as an X."""
    y = lanes[entry.member]
    name = html.escape(entry.member)
    start = entry.created_at if entry.created_at == entry.created_at else t_end
    end = entry.retired_at or t_end
    dash = ' stroke-dasharray="6 4"' if entry.retired_at else ""
    out = [f'<text x="10" y="{y + 4:.1f}" fill="{color}">{name}</text>',
           f'<line x1="{x(start):.1f}" y1="{y:.1f}" x2="{x(end):.1f}" y2="{y:.1f}" stroke="{color}" '
           f'stroke-width="3"{dash}><title>{name}</title></line>']
    if entry.forked_from in lanes:
        parent_y = lanes[entry.forked_from]
        tip = y - 7 if parent_y < y else y + 7
        out.append(f'<line x1="{x(start):.1f}" y1="{parent_y:.1f}" x2="{x(start):.1f}" y2="{tip:.1f}" '
                   f'stroke="{color}" stroke-width="1.5" marker-end="url(#arrow)">'
                   f'<title>{name} forked from {html.escape(entry.forked_from)}</title></line>')
    for _, trial in kept.iterrows():
        out.append(f'<circle class="promotion" cx="{x(trial["finished_at"]):.1f}" cy="{y:.1f}" r="5" '
                   f'fill="{color}" stroke="black"><title>{html.escape(trial["trial_id"])}: val_bpb '
                   f'{trial["val_bpb"]:.4f}</title></circle>')
    if entry.retired_at:
        rx = x(entry.retired_at)
        out += [f'<line x1="{rx - 6:.1f}" y1="{y - 6:.1f}" x2="{rx + 6:.1f}" y2="{y + 6:.1f}" stroke="black" '
                f'stroke-width="2"><title>{name} retired</title></line>',
                f'<line x1="{rx - 6:.1f}" y1="{y + 6:.1f}" x2="{rx + 6:.1f}" y2="{y - 6:.1f}" stroke="black" '
                'stroke-width="2"/>']
    return out


def _imported_mark(entry: dict) -> str:
    """kept (a commit of the branch), else the run's status (discard or crash)."""
    return "kept" if entry["kind"] == "ancestor" else entry.get("Imported-Status", "trial")


def _imported_title(entry: dict) -> str:
    bpb = entry.get("Imported-Val-Bpb") or "-"
    text = f"{entry.get(IMPORTED_TRAILER, '')[:SHORT]} {_imported_mark(entry)}: val_bpb {bpb} (imported, not compared)"
    return text + (f": {entry['Imported-Description']}" if entry.get("Imported-Description") else "")


def _imported_lane_svg(entries: list[dict], y: float, plot_width: float) -> list[str]:
    """An adopted project's history, before the seed, in its own order (not on the time axis): kept commits as
    filled dots, discarded and crashed runs as hollow ones (crashed in red); val_bpb only in the titles."""
    step = min(IMPORTED_STEP, plot_width / len(entries))
    out = [f'<text x="10" y="{y + 4:.1f}" fill="{IMPORTED_COLOR}">imported</text>',
           f'<line x1="{SVG_LABEL_WIDTH}" y1="{y:.1f}" x2="{SVG_LABEL_WIDTH + step * len(entries):.1f}" '
           f'y2="{y:.1f}" stroke="{IMPORTED_COLOR}" stroke-dasharray="2 3"/>',
           f'<text x="{SVG_LABEL_WIDTH}" y="{y + 16:.1f}" font-size="10" fill="{IMPORTED_COLOR}">the adopted '
           "project's commits and runs in its own order, not on the time axis; its own val_bpb, never compared</text>"]
    for i, entry in enumerate(entries):
        mark = _imported_mark(entry)
        stroke = FAILED_COLOR if mark == "crash" else IMPORTED_COLOR
        out.append(f'<circle class="imported {html.escape(mark)}" cx="{SVG_LABEL_WIDTH + step * (i + 0.5):.1f}" '
                   f'cy="{y:.1f}" r="4" fill="{IMPORTED_COLOR if mark == "kept" else "white"}" stroke="{stroke}" '
                   f'stroke-width="1.5"><title>{html.escape(_imported_title(entry))}</title></circle>')
    return out


def lineage_svg(snap: Snapshot) -> str:
    """A hand-drawn SVG: one lane per member over time, forks as arrows, promotions as dots, retirements as X;
    an adopted project's history in a lane of its own above them."""
    t0, t1 = _time_span(snap)
    plot_width = SVG_WIDTH - SVG_LABEL_WIDTH - SVG_RIGHT
    first = 1 if snap.imported else 0                   # the imported lane takes the top one
    height = SVG_TOP + SVG_LANE * (first + len(snap.lineage)) + SVG_BOTTOM

    def x(stamp: float) -> float:
        return SVG_LABEL_WIDTH + (float(stamp) - t0) / (t1 - t0) * plot_width

    lanes = {e.member: SVG_TOP + SVG_LANE * (first + i + 0.5) for i, e in enumerate(snap.lineage)}
    colors = _colors(snap)
    kept = snap.trials[_kept(snap.trials) & snap.trials["finished_at"].notna()]
    axis_y = height - SVG_BOTTOM + 15
    imported = f", {len(snap.imported)} imported" if snap.imported else ""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
             f'viewBox="0 0 {SVG_WIDTH} {height}" font-family="sans-serif" font-size="13">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#444"/></marker></defs>',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="10" y="22" font-size="15">lineage of {html.escape(snap.path.name)}: '
             f'{len(snap.heads)} alive, {len(snap.retired)} retired{imported}</text>']
    if snap.imported:
        parts += _imported_lane_svg(snap.imported, SVG_TOP + SVG_LANE * 0.5, plot_width)
    for entry in snap.lineage:
        member_kept = kept[kept["member"] == entry.member]
        parts += _lane_svg(entry, lanes, colors[entry.member], member_kept, x, t1)
    parts += [f'<line x1="{SVG_LABEL_WIDTH}" y1="{axis_y}" x2="{SVG_LABEL_WIDTH + plot_width}" y2="{axis_y}" '
              'stroke="#888"/>',
              f'<text x="{SVG_LABEL_WIDTH}" y="{axis_y + 18}" fill="#555">{_iso(t0)}</text>',
              f'<text x="{SVG_LABEL_WIDTH + plot_width}" y="{axis_y + 18}" fill="#555" text-anchor="end">'
              f'{_elapsed(t1 - t0)}</text>', "</svg>"]
    return "\n".join(parts) + "\n"


# ---- summary.md, report, status -------------------------------------------------------------------------

def _counts(trials: pd.DataFrame, column: str = "status") -> str:
    counts = trials[column].fillna("unknown").value_counts()
    return ", ".join(f"{value} {n}" for value, n in counts.items()) or "none"


def _baseline_line(snap: Snapshot) -> str:
    return baseline_text(snap.baseline)


def _margin_line(snap: Snapshot) -> str:
    return margin_text(*noise_margin(snap))


def _best_line(snap: Snapshot) -> str:
    best = best_head(snap)
    if best is None:
        return "no judged head yet"
    member, score, gain = best
    tip = snap.heads.get(member) or snap.retired.get(member, "")
    text = f"**{member}** at val_bpb {score:.4f} (commit {tip[:SHORT]})"
    return text if gain is None else text + f", gain {gain:+.4f} ({gain / (score + gain):+.2%}) over the seed"


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _markdown_table(board: pd.DataFrame) -> str:
    shown = board.astype(object).where(board.notna(), "")
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    return table.astype(object).map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)


VERDICT_COLUMNS = ("trial_id", "member", "verdict", "val_bpb", "runs", "head_runs", "effect", "effect_se",
                   "evidence", "bar", "sigma", "sigma_dof", "head_score", "head_weight")


def noise_band(snap: Snapshot) -> str:
    return "not measured yet (no train.py run twice)" if snap.scores is None else noise_text(snap.scores)


def effect_prior_line(snap: Snapshot) -> str:
    if snap.scores is None:
        return "no verdict yet"
    return prior_text(snap.scores, snap.rule or archive_rule(snap.path))


def segment_line(snap: Snapshot) -> str:
    return segment_text(snap.segment, snap.config_history)


def verdict_table(snap: Snapshot) -> str:
    """The evidence of each candidate's verdict (columns older archives lack are left empty)."""
    trials = snap.trials[~_seed_runs(snap.trials)]
    shown = trials.reindex(columns=list(VERDICT_COLUMNS))
    if shown.empty:
        return "No candidate judged yet."
    return _markdown_table(shown)


def summary_md(snap: Snapshot, board: pd.DataFrame) -> str:
    trials = snap.trials
    lines = [f"# popsearch report: {snap.path.name}", "",
             f"Written {_iso(time.time())} from `{snap.path}`.", "",
             f"- trials judged: {len(trials)} ({_counts(trials)})",
             f"- by proposer: {_counts(trials, 'proposer')}",
             f"- by verdict: {_counts(trials, 'verdict')}",
             f"- promotions: {int(_kept(trials).sum())}",
             f"- seed baseline val_bpb: {_baseline_line(snap)}",
             f"- noise margin: {_margin_line(snap)}",
             f"- noise band: {noise_band(snap)}",
             f"- edit effects: {effect_prior_line(snap)}",
             f"- score segment: {segment_line(snap)}",
             f"- best: {_best_line(snap)}",
             f"- members: {len(snap.heads)} alive, {len(snap.retired)} retired",
             f"- pending (proposed, not judged): {len(snap.pending)}"]
    lines += ["", "## Cost per improvement ([cost.tsv](cost.tsv))", "",
              "GPU-hours (launch to judge end of every run), agent seconds, LLM tokens and dollars, in total and per "
              "promoted improvement.", ""]
    for by in ("proposer", "member"):
        lines += [f"By {by}:", "", _markdown_table(_rounded(cost_table(trials, by))), ""]
    lines += ["", "## Leaderboard ([leaderboard.tsv](leaderboard.tsv))", "", _markdown_table(board), "",
              "## Verdicts (effect: the gap to the head in σ, ± effect_se; evidence: P(win) against its bar; "
              "see `rule`)", "",
              verdict_table(snap), "",
              "## Progress", "", "![val_bpb of every trial](progress.png)", "",
              "## Lineage", "", "![forks, promotions and retirements](lineage.svg)", ""]
    lines += _imported_section(snap, "## Imported history (the adopted project's own val_bpb, never compared)")
    return "\n".join(lines)


def _imported_section(snap: Snapshot, title: str) -> list[str]:
    from orchestrator.adopt import history_lines
    return [title, "", *("    " + line for line in history_lines(snap.imported)), ""] if snap.imported else []


def write_report(archive_dir) -> Path:
    """Write ARCHIVE/report/{leaderboard.tsv, progress.png, lineage.svg, summary.md}; returns the folder."""
    snap = snapshot(archive_dir)
    board = leaderboard(snap)
    folder = snap.path / REPORT_DIR
    folder.mkdir(exist_ok=True)
    _write_atomic(folder / "leaderboard.tsv", board.to_csv(sep="\t", index=False).encode())
    _write_atomic(folder / "progress.png", progress_png(snap))
    _write_atomic(folder / "lineage.svg", lineage_svg(snap).encode())
    _write_atomic(folder / "summary.md", summary_md(snap, board).encode())
    costs = pd.concat([cost_table(snap.trials, "proposer"), cost_table(snap.trials, "member")], ignore_index=True)
    _write_atomic(folder / "cost.tsv", costs.to_csv(sep="\t", index=False).encode())
    return folder
