"""Reports from a real archive: leaderboard order, the PNG and hand-written SVG, summary links, status text.

The archive is built through the Archive API with made-up val_bpb numbers; nothing trains."""
from __future__ import annotations

import json
import statistics
import subprocess
import time
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from orchestrator import ledger
from orchestrator.archive import Archive
from orchestrator.report import noise_margin, progress_figure, snapshot, status_text, write_report

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
    assert "seed: 2.1500 ± 0.1291 (mean ± std of 4 runs); margin 0.1000" in status_text(seeded)


def test_summary_has_baseline_margin_gain_and_counts(seeded):
    summary = (write_report(seeded) / "summary.md").read_text()
    assert "- seed baseline val_bpb: 2.1500 ± 0.1291 (mean ± std of 4 runs)" in summary
    assert "- noise margin: 0.1000 (recorded by the verdicts)" in summary
    assert "**m3** at val_bpb 1.7000" in summary and "gain +0.4500 (+20.93%) over the seed" in summary
    assert "(ok 7, crash 1, invalid 1)" in summary
    assert "- by proposer: mutate 4, baseline 3, agent 1, inbox 1" in summary
    assert "| m0 | " in summary and "| 2.1500 |" in summary


def test_progress_plot_marks_seed_runs_band_and_running_bests(seeded):
    ax = progress_figure(snapshot(seeded)).axes[0]
    assert ax.get_title() == ("seeded: 6 trials + 3 seed runs, 2 promotions\n"
                              "best val_bpb 1.7000 (m3), gain +0.4500 (+20.9%) over the seed")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:4] == ["m0", "m1", "m2", "m3"]
    for label in ("seed runs (3)", "seed mean 2.1500", "noise margin ±0.1000", "promoted", "discarded", "failed (2)"):
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
    assert bottom < 2.05 and top > 2.25                            # the whole band is in view


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


def test_margin_falls_back_to_the_seed_spread(tmp_path):
    with Archive.create(tmp_path / "fresh-seed", SEED, ["m0"]) as archive:
        seed_runs(archive, [[2.0], [2.4]])
        folder = write_report(archive.path)
    margin, source = noise_margin(snapshot(archive.path))
    assert margin == pytest.approx(2 * statistics.stdev([2.0, 2.4])) and source == "2 x std of the seed runs"
    summary = (folder / "summary.md").read_text()
    assert "- noise margin: 0.5657 (2 x std of the seed runs)" in summary
    assert "**m0** at val_bpb 2.2000" in summary and "gain +0.0000" in summary


def test_report_files(population):
    population.close()
    folder = write_report(population.path)
    assert folder == population.path / "report"
    board = pd.read_csv(folder / "leaderboard.tsv", sep="\t", keep_default_na=False)
    assert board["member"].tolist() == ["delta", "alpha", "beta", "gamma"]
    delta, alpha, beta, gamma = (board.set_index("member").loc[m] for m in ("delta", "alpha", "beta", "gamma"))
    assert float(delta["best_val_bpb"]) == 1.35 and delta["forked_from"] == "alpha" and delta["promotions"] == 1
    assert float(alpha["best_val_bpb"]) == 1.40 and alpha["trials"] == 3 and alpha["promotions"] == 2
    assert gamma["status"] == "retired" and gamma["best_val_bpb"] == "" and gamma["trials"] == 1
    assert alpha["head"] == population.heads()["alpha"][:10] and alpha["last_improvement"].endswith("Z")

    png = (folder / "progress.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 15_000
    assert b"members: alpha, beta, gamma, delta" in png

    svg = (folder / "lineage.svg").read_text()
    root = ET.fromstring(svg)
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert {"alpha", "beta", "gamma", "delta"} <= set(labels)
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "delta forked from alpha" in titles and "gamma retired" in titles
    dots = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "promotion"]
    assert len(dots) == 4

    summary = (folder / "summary.md").read_text()
    for link in ("(leaderboard.tsv)", "(progress.png)", "(lineage.svg)"):
        assert link in summary
    assert "**delta** at val_bpb 1.3500" in summary and "crash 1" in summary


def test_status_text(population):
    text = status_text(population.path)
    assert "driver: running (pid" in text                 # the fixture's archive holds the lock
    assert "t7  beta  agent  still waiting" in text and "pending: 1" in text
    assert "6 judged" in text and "4 promoted" in text and "ledger: 6 rows" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "1.3500" in lines["delta"] and "retired" in lines["gamma"]
    population.close()
    next(iter(ledger.ledger_files(population.path))).unlink()
    assert "1 judged trials missing" in status_text(population.path)
    assert "driver: not running" in status_text(population.path)


def test_report_of_a_fresh_archive(tmp_path):
    with Archive.create(tmp_path / "fresh", SEED, ["solo"]) as archive:
        folder = write_report(archive.path)
    assert (folder / "progress.png").stat().st_size > 5_000
    assert "solo" in (folder / "lineage.svg").read_text()
    assert pd.read_csv(folder / "leaderboard.tsv", sep="\t")["member"].tolist() == ["solo"]


def test_cost_per_improvement_by_proposer_and_member(tmp_path):
    """GPU-hours from each run's launch..judge_end, agent seconds and LLM tokens/cost, per promoted improvement."""
    def stamps(*spans):
        return json.dumps([{"launch": 1000.0, "judge_end": 1000.0 + s} for s in spans])
    with Archive.create(tmp_path / "cost", SEED, ["m0", "m1"]) as archive:
        run(archive, "m0", "t1", "LR = 0.02\n", "agent", True, verdict="promote", val_bpb=1.9,
            timeline=stamps(1800, 1800), agent_seconds=120.0, agent_log="edited LR")
        run(archive, "m1", "t2", "LR = 0.03\n", "endpoint", verdict="discard", val_bpb=2.0, timeline=stamps(3600),
            agent_seconds=10.0, llm_prompt_tokens=9000, llm_completion_tokens=1000, llm_cost=0.05)
        run(archive, "m1", "t3", "LR = 0.04\n", "endpoint", True, verdict="promote", val_bpb=1.8, total_seconds=7200.0,
            agent_seconds=30.0, llm_prompt_tokens=11000, llm_completion_tokens=1000, llm_cost=0.07)
        archive.reject("m0", archive.heads()["m0"], "t4", "agent", "agent proposal", "agent failed: exit 1",
                       row={"agent_seconds": 900.0, "agent_log": "no credentials"})
    folder = write_report(tmp_path / "cost")
    table = pd.read_csv(folder / "cost.tsv", sep="\t")
    by = table.set_index(table["proposer"].fillna(table["member"]))
    assert by.loc["endpoint", "gpu_hours"] == pytest.approx(3.0) and by.loc["endpoint", "promoted"] == 1
    assert by.loc["endpoint", "llm_tokens"] == 22000 and by.loc["endpoint", "llm_cost_per_improvement"] == pytest.approx(0.12)
    assert by.loc["agent", "agent_seconds"] == 1020 and by.loc["agent", "gpu_hours_per_improvement"] == pytest.approx(1.0)
    assert by.loc["m1", "gpu_hours_per_improvement"] == pytest.approx(3.0) and by.loc["m0", "trials"] == 2
    summary = (folder / "summary.md").read_text()
    assert "## Cost per improvement" in summary and "| endpoint | 2 | 1 | 3 | 40 | 2.2e+04 | 0.12 |" in summary
    assert ledger.read(tmp_path / "cost").set_index("trial_id").loc["t4", "agent_log"] == "no credentials"
