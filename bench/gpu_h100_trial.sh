#!/usr/bin/env bash
# One short device call on one H100: install the carried wheels, prepare the carried corpus, and run one
# trial of the real baseline (`popsearch trial`, 45-second budget) for throughput, MFU, memory, start-up and judge.
set -u
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v WARNING | tail -2
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH POPSEARCH_CACHE=/tmp/pcache
nvidia-smi --query-gpu=name --format=csv,noheader
python -m orchestrator.cli prepare --config bench/h100_noise.yaml | tail -2
python -m orchestrator.cli trial --config bench/h100_noise.yaml --budget ${BUDGET:-45} --device cuda 2>&1 \
  | grep -v "^ " | tee "$OUT/h100_trial.txt" | tail -25
