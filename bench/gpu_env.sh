# Sourced by the bench/gpu_*.sh scripts on the device machine: offline settings, $OUT, the wheelhouse (.whl)
# installed once into /tmp/site, and this checkout on PYTHONPATH with the compile cache kept in /tmp/pcache.
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ -d /tmp/site/ray ] || pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v WARNING | tail -2
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH POPSEARCH_CACHE=/tmp/pcache
