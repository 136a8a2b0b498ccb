#!/usr/bin/env bash
# One device call on a 4-GPU machine (see bench/RESULTS.md): install the carried wheels, prepare the
# carried corpus, then at once: the seed's noise floor (3 seeds x 300 s on GPUs 0-2) and a 60-second
# population on GPU 3 (overhead, training share, early stopping); calibration 3x on every GPU first.
set -u
export RAY_AUTH_MODE=disabled NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH POPSEARCH_CACHE=/tmp/pcache
nvidia-smi --query-gpu=index,name,memory.total --format=csv | tee "$OUT/gpus.txt"
python -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__)"
stamp prepare and calibrate
for g in 0 1 2 3; do (for k in 1 2 3; do CUDA_VISIBLE_DEVICES=$g python -m trainer.calibrate --device cuda --repeats 3; done > "$OUT/calib_gpu$g.txt" 2>&1) & done
python -m orchestrator.cli prepare --config bench/h100_noise.yaml > "$OUT/prepare.txt" 2>&1 || { cat "$OUT/prepare.txt"; exit 1; }
wait
tail -3 "$OUT/prepare.txt"
stamp populations
(CUDA_VISIBLE_DEVICES=0,1,2 timeout ${POP_TIMEOUT:-470} python -m orchestrator.cli run bench/h100_noise.yaml > "$OUT/noise.txt" 2>&1; echo "noise exit $?" >> "$OUT/noise.txt") &
(CUDA_VISIBLE_DEVICES=3 timeout ${POP_TIMEOUT:-470} python -m orchestrator.cli run bench/h100_flow.yaml > "$OUT/flow.txt" 2>&1; echo "flow exit $?" >> "$OUT/flow.txt") &
# watchdog: the first finished flow trial must be ok, else stop early and keep the logs
while [ -n "$(jobs -r)" ]; do
  sleep 5
  first=$(grep -m1 -E "^t00000 " "$OUT/flow.txt" 2>/dev/null)
  if [ -n "$first" ] && ! echo "$first" | grep -q " ok "; then
    stamp "first trial failed: $first"; pkill -f orchestrator.cli; sleep 3; ray stop --force >/dev/null 2>&1
    tail -50 "$OUT/flow.txt"; break
  fi
done
wait
stamp summaries
for r in noise flow; do
  python bench/summarize.py /tmp/runs/$r > "$OUT/${r}_summary.txt" 2>&1
  cp -r /tmp/runs/$r/ledger "$OUT/${r}_ledger" 2>/dev/null
  cp -r /tmp/runs/$r/report "$OUT/${r}_report" 2>/dev/null
done
tail -5 "$OUT/noise.txt" "$OUT/flow.txt"; cat "$OUT"/*_summary.txt; cat "$OUT"/calib_gpu*.txt | cut -c1-200
stamp done
