#!/usr/bin/env bash
# Issue 15's single-GPU part on one H200: the card's peak memory while one trial trains, the next starts up and the
# last is judged, at DEVICE_BATCH_SIZE 128 (TOTAL_BATCH_SIZE 2**18 = one micro-batch of 128 x 2048), the new
# attention, overlap on; three seed runs of the baseline at a 30-s budget are the three overlapping trials.
# Writes $OUT/b128_*.txt as it goes (a call cut by its limit still returns them). WALL bounds the whole script.
set -u
T0=$(date +%s); WALL=${WALL:-300}
source "$(dirname "$0")/gpu_env.sh"
python - "$PWD" <<'PY'
import sys, yaml
root = sys.argv[1]
cfg = yaml.safe_load(open(f"{root}/bench/h200_verdicts.yaml"))
cfg.update(archive="/tmp/runs/b128", population={"size": 1, "overrides": {"DEVICE_BATCH_SIZE": 128}},
           proposers={"weights": {"mutate": 1.0}}, stop={"max_trials": 3})
cfg["selection"] = {"noise_seeds": 3}
cfg["budget"].update(seconds=30.0)
yaml.safe_dump(cfg, open("/tmp/b128.yaml", "w"))
PY
rm -rf /tmp/runs/b128
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > /tmp/b128_memory.csv 2>/dev/null &
SAMPLER=$!
timeout $((WALL - 25)) python -m orchestrator.cli run /tmp/b128.yaml > "$OUT/b128_run.txt" 2>&1
echo "b128 run exit $? after $(( $(date +%s) - T0 )) s" | tee -a "$OUT/b128_run.txt"
kill $SAMPLER 2>/dev/null
sort -n /tmp/b128_memory.csv | tail -1 | sed 's/^/peak memory used on the card at batch 128 (MiB, nvidia-smi every 0.25 s): /' \
  | tee "$OUT/b128_peak.txt"
python bench/summarize.py /tmp/runs/b128 > "$OUT/b128_summary.txt" 2>&1; head -8 "$OUT/b128_summary.txt"
