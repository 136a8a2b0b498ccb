"""One adopted trial with its weights kept, then the judge's val_bpb against an upstream-style evaluate_bpb on the
same weights and the same validation rows (the judge's): the script's own loss path, bytes weighting, bf16 autocast.

Usage: python bench/adopt_compare.py CONFIG TRAIN_PY [--budget S] [--device cuda|cpu]; prints one JSON line."""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


def trial_with_weights(cfg, source: str, device: str, scratch: str) -> dict:
    from judge.prepare import prepare
    from orchestrator import budget as budget_rules
    from orchestrator.driver import checked_operator_settings
    from orchestrator.population import Job
    from trainer.runner import run_trial
    data = prepare(cfg.data, log=lambda *a, **k: None)
    job = Job(trial_id="adopt", member="bench", parent_commit="", commit="", source=source, proposer="bench",
              message="")
    slot = {"device": device, "budget_factor": 1.0, "gpu_index": os.environ.get("CUDA_VISIBLE_DEVICES")}
    spec = budget_rules.trial_spec(cfg, job, slot, data.data_dir, 0,
                                   max(cfg.budget.startup_floor, cfg.budget.startup_allowance),
                                   operator_env=checked_operator_settings())
    spec.wait_for_go, spec.keep_scratch, spec.scratch_root = False, True, scratch
    return {"result": run_trial(spec).to_dict(), "data_dir": data.data_dir}


def upstream_style_bpb(train_py: Path, weights: Path, data_dir: str, cfg, device: str) -> float:
    """sum of model(x, y, reduction='none') over targets with bytes > 0, / ln 2 / their bytes, on the judge's rows."""
    from judge.evaluate import load_weights, run_until_data, token_bytes, val_rows, val_vocab
    from judge.adopted import matching_model
    from judge.tokencache import read_meta
    rows = val_rows(data_dir, cfg.judge.seq_len, cfg.judge.eval_tokens)
    table = torch.from_numpy(token_bytes(data_dir, val_vocab(data_dir))).to(device)
    code = compile(train_py.read_bytes(), str(train_py), "exec")
    module = run_until_data(train_py, code, cfg.judge.seq_len, read_meta(Path(data_dir) / "train"), [])
    state = load_weights(weights)
    model = matching_model(vars(module), state.keys())
    model.load_state_dict(state)
    model.to(device).eval()
    nats, nbytes = 0.0, 0
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        for start in range(0, len(rows), cfg.judge.eval_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(rows[start:start + cfg.judge.eval_batch])).to(device)
            x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
            loss = model(x, y, reduction="none").view(-1).float()
            b = table[y.reshape(-1)]
            nats += float((loss * (b > 0)).double().sum())
            nbytes += int(b.sum())
    return nats / math.log(2) / nbytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("train_py")
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from orchestrator.config import load
    cfg = load(args.config)
    cfg.budget.seconds = args.budget
    scratch = tempfile.mkdtemp(prefix="adopt-bench-")
    run = trial_with_weights(cfg, Path(args.train_py).read_text(), args.device, scratch)
    r = run["result"]
    out = {k: r.get(k) for k in ("status", "reason", "val_bpb", "startup_seconds", "training_seconds",
                                 "judge_seconds", "tokens", "steps", "peak_vram_mb", "device")}
    out["tok_per_s"] = r["tokens"] / r["training_seconds"] if r.get("training_seconds") else None
    judged = sorted(glob.glob(os.path.join(scratch, "popsearch-judge-*", "train.py")))
    if r["status"] == "ok" and judged:
        folder = Path(judged[-1]).parent
        out["script_style_val_bpb"] = upstream_style_bpb(folder / "train.py", folder / "weights.pt",
                                                         run["data_dir"], cfg, args.device)
        out["difference"] = out["script_style_val_bpb"] - r["val_bpb"]
    out["compared_on"] = (f"the judge's {cfg.judge.eval_tokens} validation tokens at seq_len {cfg.judge.seq_len}; "
                          "the script's loss path with reduction='none', targets of 0 bytes left out, bf16 on cuda")
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
