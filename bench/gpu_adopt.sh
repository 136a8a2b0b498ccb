#!/usr/bin/env bash
# One device call on one H200 (issue 14), not yet run: an upstream-style script (tests/candidates_adopt/upstream_train.py,
# widened by constant overrides) committed in a one-commit git project with a results.tsv, adopted as the seed at a
# 60-s budget on ../shared/corpus (carried as .data/corpus): `popsearch adopt` with one trial, then bench/adopt_compare.py
# (one more trial with its weights kept): start-up, tok/s, judge seconds, and the judge's val_bpb against an
# upstream-style evaluate_bpb of the same weights on the judge's own validation rows.
set -u
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/out}; OUT=/tmp/adopt; mkdir -p "$OUT" "$FINAL"
ROOT=$PWD
[ -d /tmp/site/ray ] || pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v WARNING | tail -2
export PATH=/tmp/site/bin:$PATH POPSEARCH_CACHE=/tmp/pcache PYTHONPATH=/tmp/site:$ROOT
BUDGET=${BUDGET:-60}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python - "$ROOT" "$BUDGET" <<'PY'
import sys, yaml
root, budget = sys.argv[1], float(sys.argv[2])
cfg = yaml.safe_load(open(f"{root}/bench/h100_noise.yaml"))
cfg["data"]["corpus"] = f"local:{root}/.data/corpus"
cfg.update(archive="/tmp/adopt_archive", population={"size": 1}, selection={"noise_seeds": 1}, stop={"max_trials": 1})
cfg["budget"].update(seconds=budget, startup_floor=180.0, finish_allowance=60.0)
yaml.safe_dump(cfg, open("/tmp/adopt.yaml", "w"))
PY
python -m orchestrator.cli prepare --config /tmp/adopt.yaml | tail -1
rm -rf /tmp/adopt_project /tmp/adopt_archive && mkdir -p /tmp/adopt_project
python -c "
from trainer.constants import apply_overrides
src = open('tests/candidates_adopt/upstream_train.py').read()
print(apply_overrides(src, {'DEPTH': 4, 'N_EMBD': 256, 'N_HEAD': 4, 'DEVICE_BATCH_SIZE': 16}), end='')
" > /tmp/adopt_project/train.py
(cd /tmp/adopt_project && git init -q && git add train.py && git -c user.name=b -c user.email=b@b commit -qm baseline \
  && printf 'commit\tval_bpb\tmemory_gb\tstatus\tdescription\n%s\t1.000000\t1.0\tkeep\tbaseline\n' \
     "$(git rev-parse --short=7 HEAD)" > results.tsv)
timeout 500 python -m orchestrator.cli adopt /tmp/adopt_project --config /tmp/adopt.yaml > "$OUT/adopt.txt" 2>&1
echo "adopt exit $?"; tail -5 "$OUT/adopt.txt"
python bench/summarize.py /tmp/adopt_archive | tee "$OUT/summary.txt"
python -m orchestrator.cli status /tmp/adopt_archive | tee "$OUT/status.txt"
timeout 500 python bench/adopt_compare.py /tmp/adopt.yaml /tmp/adopt_project/train.py --budget "$BUDGET" --device cuda \
  2>"$OUT/compare.err" | tail -1 | tee "$FINAL/compare.json"
tar czf "$FINAL/adopt.tgz" -C "$OUT" .
