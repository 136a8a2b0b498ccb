#!/usr/bin/env bash
# One device call on one H100 (issues 3 and 4): a population of the real baseline with 60-s budgets and the
# overlap on, for WALL seconds (default 450) from a cold compile cache; prints the per-trial table, the
# training share and the gaps between trainings; the ledger comes back as ledgers.tgz.
set -u
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$OUT/gpus.txt"
python -m orchestrator.cli prepare --config bench/h100_scale.yaml | tail -1
W=${WALL:-450}
(sed "s/max_wall_seconds: .*/max_wall_seconds: $W/" bench/h100_scale.yaml; echo "  overlap: on") > /tmp/on.yaml
rm -rf /tmp/runs/h100
timeout $((W + 90)) python -m orchestrator.cli run /tmp/on.yaml --archive /tmp/runs/h100 > "$OUT/h100.txt" 2>&1
grep "^actor" "$OUT/h100.txt"
python bench/summarize.py /tmp/runs/h100 > "$OUT/h100_summary.txt" 2>&1
grep -v "^ \|^  File\|^Traceback" "$OUT/h100_summary.txt" | cut -c1-250
tar czf "$OUT/ledgers.tgz" -C /tmp/runs .
