#!/usr/bin/env bash
# One device call on a 4-GPU machine (issue 4): calibration three times on GPU 0, then three populations of the
# real baseline (60-s budgets) at once: GPU 0 with the overlap off, GPU 1 with it on, GPUs 2-3 with it on.
# Run it after bench/gpu_scaling.sh on the same warm machine to see the warm compile cache.
set -u
export RAY_AUTH_MODE=disabled NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ -d /tmp/site/ray ] || pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v WARNING | tail -2
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH POPSEARCH_CACHE=/tmp/pcache
ls /tmp/pcache 2>/dev/null | head -5; du -sh /tmp/pcache 2>/dev/null
nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$OUT/gpus.txt"
for k in 1 2 3; do CUDA_VISIBLE_DEVICES=0 python -m trainer.calibrate --device cuda --repeats 3; done | tee "$OUT/calibrate.txt"
python -m orchestrator.cli prepare --config bench/h100_scale.yaml | tail -1
W=${WALL:-400}
sed "s/max_wall_seconds: .*/max_wall_seconds: $W/" bench/h100_scale.yaml > /tmp/on.yaml
(cat /tmp/on.yaml; echo "  overlap: off") > /tmp/off.yaml
echo "  overlap: on" >> /tmp/on.yaml
rm -rf /tmp/runs/off /tmp/runs/on1 /tmp/runs/on2
(CUDA_VISIBLE_DEVICES=0 timeout $((W + 120)) python -m orchestrator.cli run /tmp/off.yaml --archive /tmp/runs/off > "$OUT/off.txt" 2>&1) &
(CUDA_VISIBLE_DEVICES=1 timeout $((W + 120)) python -m orchestrator.cli run /tmp/on.yaml --archive /tmp/runs/on1 > "$OUT/on1.txt" 2>&1) &
(CUDA_VISIBLE_DEVICES=2,3 timeout $((W + 120)) python -m orchestrator.cli run /tmp/on.yaml --archive /tmp/runs/on2 > "$OUT/on2.txt" 2>&1) &
wait
for r in off on1 on2; do
  echo "== $r"; grep "^actor" "$OUT/$r.txt"
  python bench/summarize.py /tmp/runs/$r > "$OUT/${r}_summary.txt" 2>&1; tail -4 "$OUT/${r}_summary.txt"
done
tar czf "$OUT/ledgers.tgz" -C /tmp/runs .
