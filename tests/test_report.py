"""Reports from a real archive: leaderboard order, the PNG and hand-written SVG, summary links, status text.

The archive is built through the Archive API with made-up val_bpb numbers; nothing trains."""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import time

import pandas as pd
import pytest

from judge.noise import Noise
from judge.verdict import promote_margin
from orchestrator import config_change, ledger
from orchestrator.archive import Archive
from orchestrator.config import Config, SelectionConfig
from orchestrator.population import rule_of
from orchestrator.report import (best_head, effect_prior_line, leaderboard, noise_band, noise_margin, progress_figure,
                                snapshot, write_report)
from orchestrator.status import status_text

SEED = "LR = 0.01\n"
SVG = "{http://www.w3.org/2000/svg}"


def judge(archive, member, trial_id, val_bpb, promote, status="ok"):
    archive.add_pending(member, archive.heads()[member], f"LR = {trial_id}\n", f"try {trial_id}", trial_id, "mutate")
    archive.finish(trial_id, {"status": status, "val_bpb": val_bpb, "finished_at": time.time()}, promote=promote)


@pytest.fixture
def population(tmp_path):
    with Archive.create(tmp_path / "demo-pop", SEED, ["alpha", "beta", "gamma"]) as archive:
        judge(archive, "alpha", "t1", 1.50, True)
        judge(archive, "beta", "t2", 1.60, True)
        judge(archive, "alpha", "t3", 1.55, False)
        judge(archive, "gamma", "t4", None, False, status="crash")
        judge(archive, "alpha", "t5", 1.40, True)
        archive.fork("delta", "alpha")
        archive.retire("gamma")
        judge(archive, "delta", "t6", 1.35, True)
        archive.add_pending("beta", archive.heads()["beta"], "LR = 0.3\n", "still waiting", "t7", "agent")
        yield archive


def run(archive, member, trial_id, source, proposer, promote=False, **row):
    """One judged trial of `source` on the member's head; returns the candidate (pending) commit."""
    sha = archive.add_pending(member, archive.heads()[member], source, f"{proposer} {trial_id}", trial_id, proposer)
    archive.finish(trial_id, {"status": "ok", "finished_at": time.time(), **row}, promote=promote)
    return sha


def seed_runs(archive, runs):
    for i, scores in enumerate(runs):
        run(archive, "m0", f"b{i}", SEED, "baseline", verdict="baseline", val_bpb=statistics.fmean(scores),
            run_scores=json.dumps(scores), margin=0.0)


BASELINE_RUNS = [[2.0], [2.2], [2.1, 2.3]]     # mean of the runs 2.15; mean of the rows would be 2.1333
SEED_SIGMA = statistics.stdev([2.0, 2.2, 2.1, 2.3])      # the only train.py run more than once: dof 3


def margin_of(sigma: float, dof: int, head_runs: int, selection=None) -> float:
    """The selection margin by the verdict's own formula: one run against `head_runs` runs of the head."""
    rule = rule_of(selection or SelectionConfig())
    return promote_margin(1, head_runs, Noise(sigma, dof, 1), rule, rule.default)


SEEDED_MARGIN = margin_of(SEED_SIGMA, 3, 1)                # the best head (m3) has one run


@pytest.fixture
def seeded(tmp_path):
    """Seed runs, then candidates: m1 promoted, m2 discarded below its head, a crash, a fork m3 of m1 promoted."""
    with Archive.create(tmp_path / "seeded", SEED, ["m0", "m1", "m2"]) as archive:
        seed_runs(archive, BASELINE_RUNS)
        run(archive, "m1", "t1", "LR = 0.02\n", "mutate", True, verdict="promote", val_bpb=1.90, margin=0.1)
        run(archive, "m0", "t2", "LR = 0.03\n", "mutate", verdict="discard", val_bpb=2.05, margin=0.1)
        run(archive, "m2", "t3", "LR = 0.04\n", "agent", verdict="discard", val_bpb=1.85, margin=0.1)
        run(archive, "m2", "t4", "LR = 0.05\n", "mutate", status="crash", verdict="discard")
        archive.fork("m3", "m1")
        run(archive, "m3", "t5", "LR = 0.06\n", "mutate", True, verdict="promote", val_bpb=1.70, margin=0.1)
        archive.reject("m0", archive.heads()["m0"], "t6", "inbox", "bad push", "changes files other than train.py")
    return archive.path


def test_heads_at_the_seed_score_the_seed_runs(seeded):
    write_report(seeded)
    board = pd.read_csv(seeded / "report" / "leaderboard.tsv", sep="\t", keep_default_na=False).set_index("member")
    assert board.index.tolist() == ["m3", "m1", "m0", "m2"]          # by head, not by best candidate
    assert board["head_val_bpb"].tolist() == pytest.approx([1.70, 1.90, 2.15, 2.15])
    assert board.loc["m2", "best_val_bpb"] == pytest.approx(1.85) and board.loc["m0", "best_val_bpb"] == 2.05
    assert board.loc["m0", "trials"] == 2 and board.loc["m2", "trials"] == 2   # seed runs are not m0's trials
    assert board.loc["m3", "forked_from"] == "m1" and board.loc["m3", "promotions"] == 1
    lines = {line.split()[0]: line.split() for line in status_text(seeded).splitlines() if line.strip()}
    assert lines["m0"][2] == "2.1500" and lines["m2"][2:4] == ["2.1500", "1.8500"]
    assert f"seed: 2.1500 ± 0.1291 (mean ± std of 4 runs); margin {SEEDED_MARGIN:.4f}" in status_text(seeded)
    assert "noise: device at 0 s: ±0.1291 (dof 3, 1 source(s))" in status_text(seeded)
    assert "edit effects: prior 50% null, slab +0.30σ ± 1.00σ (the default)" in status_text(seeded)  # no gaps yet


def test_summary_has_baseline_margin_gain_and_counts(seeded):
    summary = (write_report(seeded) / "summary.md").read_text()
    assert "- seed baseline val_bpb: 2.1500 ± 0.1291 (mean ± std of 4 runs)" in summary
    assert f"- noise margin: {SEEDED_MARGIN:.4f} (one run below m3's head on its device is promoted)" in summary
    assert "**m3** at val_bpb 1.7000" in summary and "gain +0.4500 (+20.93%) over the seed" in summary
    assert "(ok 7, crash 1, invalid 1)" in summary
    assert "- edit effects: prior 50% null, slab +0.30σ ± 1.00σ (the default)" in summary
    assert "- by proposer: mutate 4, baseline 3, agent 1, inbox 1" in summary
    assert "| m0 | " in summary and "| 2.1500 |" in summary


def test_progress_plot_marks_seed_runs_band_and_running_bests(seeded):
    ax = progress_figure(snapshot(seeded)).axes[0]
    assert ax.get_title() == ("seeded: 6 trials + 3 seed runs, 2 promotions\n"
                              "best val_bpb 1.7000 (m3), gain +0.4500 (+20.9%) over the seed")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:4] == ["m0", "m1", "m2", "m3"]
    for label in ("seed runs (3)", "seed mean 2.1500", f"selection margin {SEEDED_MARGIN:.4f} under the best head",
                  "promoted", "discarded", "failed (2)"):
        assert label in labels
    lines = {line.get_gid(): line for line in ax.lines if line.get_gid()}
    assert lines["seed mean"].get_ydata()[0] == pytest.approx(2.15)
    for member in ("m0", "m2"):                                    # never promoted: flat at the seed's mean
        assert lines[f"best:{member}"].get_xydata()[0] == pytest.approx([0, 2.15])
        assert max(lines[f"best:{member}"].get_ydata()) == min(lines[f"best:{member}"].get_ydata())
    assert lines["best:m1"].get_ydata()[0] == pytest.approx(2.15) and min(lines["best:m1"].get_ydata()) == 1.90
    m3 = lines["best:m3"].get_xydata()                             # starts where it forked, from m1's head
    assert m3[0] == pytest.approx([7, 1.90]) and m3[-1][1] == 1.70
    bottom, top = ax.get_ylim()
    assert bottom < 1.70 - SEEDED_MARGIN and top > 2.2              # the whole band is in view


def test_head_off_the_seed_without_a_record_scores_its_tree(tmp_path):
    with Archive.create(tmp_path / "trees", SEED, ["m0", "a"]) as archive:
        seed_runs(archive, [[2.0], [2.4]])
        run(archive, "a", "t1", "LR = 0.5\n", "mutate", verdict="discard", val_bpb=1.6)
        candidate = archive.trial_records()[-1]["commit"]      # pending commits are dropped once judged
        run(archive, "a", "t2", "LR = 0.5\n", "mutate", verdict="discard", val_bpb=1.8)
        run(archive, "a", "t3", "LR = 0.5\n", "mutate", status="crash", verdict="discard")
        path = archive.path
    head = subprocess.run(["git", "commit-tree", f"{candidate}^{{tree}}", "-p", "seed", "-m", "off the record"],
                          cwd=path, check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "update-ref", "refs/heads/pop/a", head], cwd=path, check=True)
    snap = snapshot(path)
    assert snap.head_scores == pytest.approx({"a": 1.7, "m0": 2.2})


def test_the_margin_of_a_fresh_seed_is_the_selection_tests_under_the_archives_rule(tmp_path):
    with Archive.create(tmp_path / "fresh-seed", SEED, ["m0"]) as archive:
        seed_runs(archive, [[2.0], [2.4], [2.2]])
        folder = write_report(archive.path)
    expected = margin_of(statistics.stdev([2.0, 2.4, 2.2]), 2, 3)     # σ of the three seed runs, all the head's
    margin, source = noise_margin(snapshot(archive.path))
    assert margin == pytest.approx(expected) and source.startswith("one run below m0's head")
    summary = (folder / "summary.md").read_text()
    assert f"- noise margin: {expected:.4f} (one run below m0's head" in summary
    assert "**m0** at val_bpb 2.2000" in summary and re.search(r"gain [+-]0\.0000", summary)
    strict = Config()
    strict.selection.promote_at = 0.7                                       # the archive's own rule is read
    (archive.path / "config.yaml").write_text(json.dumps(strict.to_dict()))
    margin = noise_margin(snapshot(archive.path))[0]
    assert margin == pytest.approx(margin_of(statistics.stdev([2.0, 2.4, 2.2]), 2, 3, strict.selection))
    assert margin > expected


def test_a_promoted_head_is_scored_by_its_posterior_as_the_driver_scores_it(tmp_path):
    with Archive.create(tmp_path / "posterior", SEED, ["m0"]) as archive:
        seed_runs(archive, [[2.0], [2.1]])
        run(archive, "m0", "t1", "LR = 0.02\n", "mutate", True, verdict="promote", val_bpb=1.85,
            run_scores=json.dumps([1.80, 1.90]), selection_runs=2, head_score=1.93, head_weight=1.6,
            effect=-2.1, effect_se=1.2)
    snap = snapshot(tmp_path / "posterior")
    assert snap.head_scores["m0"] == pytest.approx(1.93)             # the posterior, not the lucky runs' 1.85
    assert "fitted to 1 verdicts" in effect_prior_line(snap)


def test_an_earlier_rules_promotion_is_scored_by_its_confirmation_runs_as_it_was(tmp_path):
    with Archive.create(tmp_path / "confirmed", SEED, ["m0"]) as archive:
        seed_runs(archive, [[2.0], [2.1]])
        run(archive, "m0", "t1", "LR = 0.02\n", "mutate", True, verdict="promote", val_bpb=1.88,
            run_scores=json.dumps([1.80, 1.90, 1.94]), selection_runs=1, head_score=1.92)
    snap = snapshot(tmp_path / "confirmed")
    assert snap.head_scores["m0"] == pytest.approx(1.92)             # not the row's mean of all three runs
    lines = {line.get_gid(): line for line in progress_figure(snap).axes[0].lines if line.get_gid()}
    assert lines["best:m0"].get_ydata()[-1] == pytest.approx(1.92)  # the running best steps to the head score
    assert "±0.0716 (dof 3, 2 source(s))" in noise_band(snap)         # all three runs count for σ, and the seed's


def test_a_new_segment_keeps_old_scores_apart_and_status_names_it(tmp_path):
    with Archive.create(tmp_path / "segments", SEED, ["m0", "m1"]) as archive:
        seed_runs(archive, [[2.0], [2.2]])
        run(archive, "m1", "t2", "LR = 0.02\n", "mutate", True, verdict="promote", val_bpb=1.5)
        path = archive.path
    old, new = Config(archive=str(path)), Config(archive=str(path))
    new.budget.seconds = 150.0
    (path / "config.yaml").write_text(json.dumps(old.to_dict()))
    assert config_change.record(path, new, next_trial=3) == 1
    snap = snapshot(path)
    assert snap.head_scores == pytest.approx({"m0": 2.1, "m1": 1.5})   # nothing in segment 1 yet: old scores show
    assert snap.head_segments == {"m0": 0, "m1": 0} and noise_margin(snap)[0] is None   # no head run here yet
    with Archive.open(path) as archive:
        archive.segment = 1
        run(archive, "m0", "r3", SEED, "reference", verdict="reference", val_bpb=2.55, run_scores="[2.5, 2.6]")
    snap = snapshot(path)
    assert snap.head_scores == pytest.approx({"m0": 2.55, "m1": 1.5}) and snap.head_segments == {"m0": 1, "m1": 0}
    assert best_head(snap)[:2] == ("m0", pytest.approx(2.55))        # never ranked against m1's old score
    assert leaderboard(snap)["member"].tolist() == ["m0", "m1"]
    assert "[segment 0]" in noise_band(snap) and "device at 0 s: ±0.0707 (dof 1" in noise_band(snap)
    text = status_text(path)
    assert "segment 1 since trial 3 (budget.seconds: 300.0 -> 150.0)" in text and "head_segment" in text
    assert ledger.read(path).set_index("trial_id")["segment"].to_dict() == {"b0": 0, "b1": 0, "t2": 0, "r3": 1}
