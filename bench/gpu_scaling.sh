#!/usr/bin/env bash
# One device call on a 2- or 4-GPU machine: two populations of the real baseline with 60-second budgets at
# once, one on GPU 0 and one on all the other GPUs, for ~6 minutes (a 340-s stop rule, then in-flight trials finish); then runs per hour per GPU, each
# GPU's training share of its wall time (with the early-launch overlap), and start-up / judge seconds.
set -u
export RAY_AUTH_MODE=disabled NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v WARNING | tail -2
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH POPSEARCH_CACHE=/tmp/pcache
n=$(nvidia-smi -L | wc -l); rest=$(seq -s, 1 $((n - 1)))
nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$OUT/gpus.txt"
python -m orchestrator.cli prepare --config bench/h100_scale.yaml | tail -1
(CUDA_VISIBLE_DEVICES=0 timeout 500 python -m orchestrator.cli run bench/h100_scale.yaml --archive /tmp/runs/one \
  > "$OUT/one.txt" 2>&1) &
(CUDA_VISIBLE_DEVICES=$rest timeout 500 python -m orchestrator.cli run bench/h100_scale.yaml --archive /tmp/runs/all \
  > "$OUT/all.txt" 2>&1) &
wait
for r in one all; do
  echo "== $r"; grep "^actor" "$OUT/$r.txt"
  python bench/summarize.py /tmp/runs/$r > "$OUT/${r}_summary.txt" 2>&1; tail -$((n + 3)) "$OUT/${r}_summary.txt"
  mkdir -p "$OUT/$r"; cp -r /tmp/runs/$r/ledger "$OUT/$r/"
done
