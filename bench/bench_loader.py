"""Tokens/s of TrainingBatches from the token cache on one core (CPU tensors, the loader alone).

Usage: python bench/bench_loader.py [--corpus local:/work/shared/corpus|builtin] [--seconds S]"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from judge.loader import TrainingBatches
from judge.prepare import prepare
from judge.spec import DataConfig

SHARED_CORPUS = Path("/work/shared/corpus")
SHAPES = ((64, 2048), (8, 256), (32, 1024))


def default_corpus() -> str:
    return f"local:{SHARED_CORPUS}" if (SHARED_CORPUS / "shard_00000.parquet").exists() else "builtin"


def measure(train_dir, batch_size: int, seq_len: int, seconds: float) -> tuple[float, int, int]:
    batches = TrainingBatches(batch_size, seq_len, seed=0, train_dir=train_dir)
    next(batches)
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        next(batches)
        n += 1
    return n * batch_size * seq_len / elapsed, n, batches.epoch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", default=default_corpus())
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cache", default=str(Path(__file__).resolve().parent / "out" / "cache"))
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})    # one core
    torch.set_num_threads(1)
    spec = prepare(DataConfig(corpus=args.corpus, vocab_size=args.vocab_size, cache_dir=args.cache))
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()}, 1 core, corpus {args.corpus}, "
          f"{spec.n_train_tokens:,} train tokens in {spec.n_train_docs:,} docs, vocab {spec.vocab_size}")
    for batch_size, seq_len in SHAPES:
        rate, n, epoch = measure(spec.train_dir, batch_size, seq_len, args.seconds)
        print(f"RESULT loader B={batch_size} T={seq_len}: {rate / 1e6:.1f}M tokens/s "
              f"({n} batches, epoch {epoch})")


if __name__ == "__main__":
    main()
