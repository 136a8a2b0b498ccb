#!/usr/bin/env bash
# One device call on one H200 (issue 12): the shipped attention chain (the tree of commit 0ed2512, unpacked into
# .bench_old by the caller) against this tree, side by side: graph breaks, the Muon step per matrix vs stacked,
# and two full 60-s `popsearch trial`s of the real baseline each (cold compile cache, then warm), then one table.
# Caller, here: rm -rf .bench_old && mkdir .bench_old && git archive 0ed2512 | tar x -C .bench_old
set -u
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/out}; OUT=/tmp/attn; mkdir -p "$OUT" "$FINAL"   # a few files come back: the table and a tarball
ROOT=$PWD
[ -d /tmp/site/ray ] || pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v WARNING | tail -2
export PATH=/tmp/site/bin:$PATH POPSEARCH_CACHE=/tmp/pcache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
sed "s|local:.data/corpus|local:$ROOT/.data/corpus|" bench/h100_noise.yaml > /tmp/attn.yaml
PYTHONPATH=/tmp/site:$ROOT python -m orchestrator.cli prepare --config /tmp/attn.yaml | tail -1
TREES=${TREES:-old new}           # TREES=new BUDGET=44 MICRO=0: the new chain alone at the shipped chain's tokens
[ "${MICRO:-1}" = 1 ] && for tree in $TREES; do
  dir=$ROOT; [ $tree = old ] && dir=$ROOT/.bench_old
  (cd "$dir" && PYTHONPATH=/tmp/site:$dir python "$ROOT/bench/attention_bench.py" breaks) 2>"$OUT/breaks_$tree.err" | tail -1 \
    | tee "$OUT/breaks_$tree.json"
done
[ "${MICRO:-1}" = 1 ] && PYTHONPATH=/tmp/site:$ROOT python bench/attention_bench.py muon .bench_old/trainer/train.py 2>"$OUT/muon.err" | tail -1 \
  | tee "$OUT/muon.json"
for tree in $TREES; do
  dir=$ROOT; [ $tree = old ] && dir=$ROOT/.bench_old
  for run in cold warm; do
    seed=0; [ $run = warm ] && seed=1
    (cd "$dir" && PYTHONPATH=/tmp/site:$dir POPSEARCH_COMPILE_CACHE=/tmp/cc_$tree timeout 300 \
      python -m orchestrator.cli trial --config /tmp/attn.yaml --budget ${BUDGET:-60} --device cuda --seed $seed) \
      > "$OUT/trial_${tree}_$run.txt" 2>&1
    grep -E "^(status|val_bpb|tokens|training_seconds|startup_seconds|judge_seconds|peak_vram_mb|mfu|backend):" \
      "$OUT/trial_${tree}_$run.txt" | tr '\n' ' '; echo " <- $tree $run"
  done
done
PYTHONPATH=/tmp/site:$ROOT python bench/attention_table.py "$OUT" | tee "$FINAL/table.md"
tar czf "$FINAL/attention.tgz" -C "$OUT" .
