"""The issue-12 table from bench/gpu_attention.sh's outputs: tok/s, MFU by the one formula and by 6N, memory,
start-up, judge, val_bpb and graph breaks of the shipped and the new attention chain."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer.flops import peak_flops


def block(path: Path) -> dict:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.isidentifier():
            values[key] = value
    return values


def baseline_flops() -> tuple[float, int]:
    """The real baseline's FLOPs per token (trainer/flops.py) and its parameter count, built on the meta device."""
    import torch
    from trainer import train
    with torch.device("meta"):
        model = train.GPT(8192)
    return model.flops_per_token(), sum(p.numel() for p in model.parameters())


def main(out: Path) -> None:
    per_token, params = baseline_flops()
    gpu = (out / "gpu.txt").read_text().split(",")[0].strip()
    peak = peak_flops(gpu)
    print(f"card: {gpu}; baseline {params:,} params, {per_token / 1e6:.1f} MFLOPs/token by trainer/flops.py, "
          f"{6 * params / 1e6:.1f} by 6N\n")
    print("| chain | run | status | tok/s | MFU (flops.py) | MFU (6N) | peak MB | start-up s | judge s | val_bpb | graph breaks |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for tree in ("old", "new"):
        breaks = json.loads((out / f"breaks_{tree}.json").read_text() or "{}") if (out / f"breaks_{tree}.json").exists() else {}
        for run in ("cold", "warm"):
            path = out / f"trial_{tree}_{run}.txt"
            if not path.exists():
                continue
            r = block(path)
            seconds, tokens = float(r.get("training_seconds") or 0), float(r.get("tokens") or 0)
            tok_s = tokens / seconds if seconds else 0.0
            mfu = per_token * tok_s / peak if peak else float("nan")
            mfu6 = 6 * params * tok_s / peak if peak else float("nan")
            name = "shipped (0ed2512)" if tree == "old" else "new"
            print(f"| {name} {r.get('backend', '')} | {run} | {r.get('status')} | {tok_s / 1e6:.3f}M | {mfu:.3f} | "
                  f"{mfu6:.3f} | {r.get('peak_vram_mb')} | {r.get('startup_seconds')} | {r.get('judge_seconds')} | "
                  f"{r.get('val_bpb')} | {breaks.get('graph_breaks', '?')} ({breaks.get('graphs', '?')} graphs) |")
    muon = out / "muon.json"
    if muon.exists():
        print(f"\nMuon step (32 matrices, compiled Newton-Schulz): {muon.read_text().strip()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
