#!/usr/bin/env bash
# Issue 9 on one H200: does a promoted head reproduce? The real baseline at a 60-s budget (bench/h200_verdicts.yaml),
# 3 seed runs, then only the MATRIX_LR 0.02 -> 0.025 edit through the inbox; the population stops once that
# candidate has its verdict (max_trials 4). Then, while time is left (WALL), the promoted head's train.py is trained
# and judged again with a seed no population run used (popsearch trial --seed 987654): the re-run beside its
# confirmed score and beside the old head's runs. Files under $OUT as it goes.
set -u
T0=$(date +%s); WALL=${WALL:-540}
source "$(dirname "$0")/gpu_env.sh"
INBOX=/tmp/verdicts_inbox ARCHIVE=/tmp/runs/promote
if [ ! -d "$ARCHIVE" ]; then
  python -m orchestrator.cli prepare --config bench/h200_verdicts.yaml | tail -1
  rm -rf "$INBOX"; mkdir -p "$INBOX"
  python - "$INBOX" <<'PY'
import difflib, sys
from pathlib import Path
seed = Path("trainer/train.py").read_text()
lr = "MATRIX_LR = 0.02 "
assert lr in seed, "trainer/train.py has no 'MATRIX_LR = 0.02 ' line"
new = seed.replace(lr, "MATRIX_LR = 0.025", 1)
diff = difflib.unified_diff(seed.splitlines(True), new.splitlines(True), "a/train.py", "b/train.py")
Path(sys.argv[1], "m0--1-matrix-lr.patch").write_text("".join(diff))
PY
fi
sed "s/max_wall_seconds: .*/max_trials: 4/; s#archive: .*#archive: $ARCHIVE#" bench/h200_verdicts.yaml > /tmp/promote.yaml
LIMIT=$((WALL - 20 - ($(date +%s) - T0)))
echo "population limit $LIMIT s"
if [ -f "$ARCHIVE/config.yaml" ]; then CMD="resume $ARCHIVE"; else CMD="run /tmp/promote.yaml --archive $ARCHIVE"; fi
timeout $LIMIT python -m orchestrator.cli $CMD > "$OUT/promote_run.txt" 2>&1
echo "population exit $? after $(( $(date +%s) - T0 )) s" | tee -a "$OUT/promote_run.txt"
python bench/summarize.py "$ARCHIVE" > "$OUT/promote_summary.txt" 2>&1
python - "$ARCHIVE" <<'PY' | tee "$OUT/promote_verdict.txt"
import json, sys
import pandas as pd
df = pd.read_parquet(f"{sys.argv[1]}/ledger").sort_values("finished_at")
print("seed runs:", [round(v, 5) for v in df[df.proposer == "baseline"].val_bpb])
for _, r in df[df.proposer == "inbox"].iterrows():
    print(f"{r.trial_id}: {r.verdict}, runs {[round(v, 5) for v in json.loads(r.run_scores or '[]')]}, selection runs "
          f"{r.selection_runs}, head runs {r.head_runs}, σ {r.sigma} (dof {r.sigma_dof}), evidence {r.evidence}, "
          f"bar {r.bar}, head_score {r.head_score}\n    {r.decided_by}")
PY
git -C "$ARCHIVE" show refs/heads/pop/m0:train.py > /tmp/promoted_train.py 2>/dev/null
if grep -q "MATRIX_LR = 0.025" /tmp/promoted_train.py && [ $(( WALL - ($(date +%s) - T0) )) -gt 115 ]; then
  timeout $(( WALL - ($(date +%s) - T0) - 5 )) python -m orchestrator.cli trial /tmp/promoted_train.py \
    --config /tmp/promote.yaml --seed 987654 --device cuda > "$OUT/rerun.txt" 2>&1
  echo "re-run exit $?" | tee -a "$OUT/rerun.txt"; grep -i "val_bpb\|status" "$OUT/rerun.txt" | tail -4
else
  echo "no re-run here (head is not the MATRIX_LR edit, or too little time left)" | tee "$OUT/rerun.txt"
fi
tar czf "$OUT/promote_archive.tgz" -C /tmp/runs promote
echo "total wall $(( $(date +%s) - T0 )) s"
