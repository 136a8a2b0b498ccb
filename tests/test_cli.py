"""The one-shot commands for real: `popsearch trial` trains and judges one train.py, `popsearch calibrate`
prints the device speed that `budget.reference_speed` takes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

POPSEARCH = [sys.executable, "-m", "orchestrator.cli"]


def run_cli(args, timeout=300):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    return subprocess.run(POPSEARCH + args, capture_output=True, text=True, timeout=timeout, env=env)


def test_trial_trains_and_judges_one_train_py(tmp_path: Path, cache_root, tiny_source):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "budget": {"seconds": 2.0, "startup_floor": 60.0},
        "data": {"corpus": "builtin", "vocab_size": 512, "cache_dir": str(cache_root)},
        "judge": {"seq_len": 64, "eval_tokens": 4096, "eval_batch": 8},
        "resources": {"device": "cpu"},
    }))
    train_py = tmp_path / "train.py"
    train_py.write_text(tiny_source)
    proc = run_cli(["trial", str(train_py), "--config", str(cfg), "--device", "cpu"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "val_bpb" in proc.stdout and "status" in proc.stdout
    broken = tmp_path / "broken.py"
    broken.write_text(tiny_source.replace("def main():", "def main():\n    raise SystemExit(3)\n", 1))
    proc = run_cli(["trial", str(broken), "--config", str(cfg), "--device", "cpu"])
    assert proc.returncode == 1 and "crash" in proc.stdout


def test_calibrate_prints_a_speed():
    proc = run_cli(["calibrate", "--device", "cpu", "--repeats", "2"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["speed"] > 0 and len(out["speeds"]) == 2
