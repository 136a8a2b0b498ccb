#!/usr/bin/env bash
# Issue 9 on one H200: the real baseline at a 60-s budget, fed through the inbox with the MATRIX_LR 0.02 -> 0.025
# edit and two null edits; prints each candidate's verdict, runs and evidence, and whether each promoted head
# reproduces in its reference runs (runs that did not select it). Ends within WALL s (530); a second call while the
# machine is warm resumes the archive in /tmp (the journal keeps every run). Ledger summary and archive to $OUT.
set -u
T0=$(date +%s); DEADLINE=$((T0 + ${WALL:-530}))
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$OUT/gpus.txt"
INBOX=/tmp/verdicts_inbox ARCHIVE=/tmp/runs/verdicts
[ -f "$ARCHIVE/config.yaml" ] && RESUMING=1 || RESUMING=0
if [ $RESUMING = 0 ]; then
python -m orchestrator.cli prepare --config bench/h200_verdicts.yaml | tail -1
rm -rf "$INBOX" "$ARCHIVE"; mkdir -p "$INBOX"
python - "$INBOX" <<'PY'
import difflib, sys
from pathlib import Path
seed = Path("trainer/train.py").read_text()
lr = "MATRIX_LR = 0.02 "
assert lr in seed, "trainer/train.py has no 'MATRIX_LR = 0.02 ' line"
edits = {  # sorted by name = the order the inbox takes them
    "m0--1-matrix-lr.patch": seed.replace(lr, "MATRIX_LR = 0.025", 1),
    "m0--2-null-constant.patch": seed.replace(lr, "UNUSED_BENCH_CONSTANT = 3  # read by nothing\n" + lr, 1),
    "m0--3-null-comment.patch": seed.replace("\n", "\n# a comment: training is unchanged\n", 1),
}
for name, new in edits.items():
    diff = difflib.unified_diff(seed.splitlines(True), new.splitlines(True), "a/train.py", "b/train.py")
    Path(sys.argv[1], name).write_text("".join(diff))
    print("inbox:", name)
PY
fi
# The stop leaves room for the trials still in flight (one training, one starting: ~170 s) and the summary.
W=$((DEADLINE - $(date +%s) - 190))
sed "s/max_wall_seconds: .*/max_wall_seconds: $W/" bench/h200_verdicts.yaml > /tmp/verdicts.yaml
echo "population wall: $W s"
# issue 15's single-GPU part: the card's memory while one trial trains, the next starts up and the last is judged
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/memory_mb.csv" 2>/dev/null &
SAMPLER=$!
if [ $RESUMING = 1 ]; then CMD="resume $ARCHIVE"; else CMD="run /tmp/verdicts.yaml --archive $ARCHIVE"; fi
timeout $((DEADLINE - $(date +%s) - 15)) python -m orchestrator.cli $CMD > "$OUT/verdicts.txt" 2>&1
echo "run exit $? after $(( $(date +%s) - T0 )) s"
kill $SAMPLER 2>/dev/null
sort -n "$OUT/memory_mb.csv" | tail -1 | sed 's/^/peak memory used on the card (MiB, nvidia-smi, every 0.5 s): /'
grep -v "^ \|^  File\|^Traceback" "$OUT/verdicts.txt" | grep -i "inbox\|promot\|confirm\|waits\|re-run\|error" | cut -c1-250
python bench/summarize.py "$ARCHIVE" > "$OUT/verdicts_summary.txt" 2>&1
python - "$ARCHIVE" <<'PY' | tee "$OUT/verdicts_candidates.txt"
import json, statistics, sys
import pandas as pd
df = pd.read_parquet(f"{sys.argv[1]}/ledger").sort_values("finished_at")
seed = df[df.proposer == "baseline"]
print(f"seed runs: {[round(v, 5) for v in seed.val_bpb]}")
for _, r in df[df.proposer == "inbox"].iterrows():
    runs = json.loads(r.run_scores or "[]")
    print(f"{r.trial_id} {str(r.message)[:40]!r}: {r.verdict}, {r.runs} run(s) {[round(v, 5) for v in runs]}, "
          f"head weight {r.head_runs}, gap {r.effect} ± {r.effect_se} σ, σ {r.sigma} (dof {r.sigma_dof}), "
          f"P(win) {r.evidence}, bar {r.bar}\n    {r.decided_by}")
    if r.verdict != "promote":
        continue
    again = df[(df.proposer == "reference") & (df.source_hash == r.source_hash)]
    redo = [v for s in again.run_scores for v in json.loads(s or "[]")]
    sigma = df[df.trial_id == again.trial_id.iloc[-1]].sigma.iloc[0] if len(again) else r.sigma
    band = 2 * (sigma or 0) * (1 / max(len(redo), 1) + 1 / r.head_weight) ** 0.5
    verdict = ("no re-run finished in time" if not redo else
               f"re-runs {[round(v, 5) for v in redo]} (mean {statistics.fmean(redo):.5f}) vs its posterior score "
               f"{r.head_score:.5f} (the selecting runs' mean {statistics.fmean(runs):.5f}): "
               f"{'reproduces' if abs(statistics.fmean(redo) - r.head_score) <= band else 'does NOT reproduce'} "
               f"(within 2σ·√(1/n + 1/weight) = {band:.5f})")
    print(f"    promoted head re-run: {verdict}")
decided = (df.proposer == "inbox").sum()
print(f"{decided} of 3 inbox candidates decided before the wall (the rest stay pending in the archive)")
PY
tar czf "$OUT/archive.tgz" -C /tmp/runs verdicts
echo "total wall $(( $(date +%s) - T0 )) s"
