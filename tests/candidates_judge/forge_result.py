"""Judge test candidate: writes a perfect result to the judge's --out file and exits at import -> invalid."""
import json
import os
import sys

out = sys.argv[sys.argv.index("--out") + 1]
with open(out, "w") as f:
    json.dump({"status": "ok", "reason": "", "val_bpb": 0.01, "causal": True}, f)
os._exit(0)
