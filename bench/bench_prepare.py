"""Wall time of `prepare` into a fresh cache (default: the builtin corpus), with its own progress lines.

Usage: python bench/bench_prepare.py [--corpus builtin|local:PATH] [--vocab-size N] [--repeats K]"""
from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time

from judge.prepare import prepare
from judge.spec import DataConfig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", default="builtin")
    ap.add_argument("--vocab-size", type=int, default=DataConfig.vocab_size)
    ap.add_argument("--max-train-docs", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    for _ in range(args.repeats):
        cache = tempfile.mkdtemp(prefix="popsearch-bench-")
        try:
            cfg = DataConfig(corpus=args.corpus, vocab_size=args.vocab_size, cache_dir=cache,
                             max_train_docs=args.max_train_docs)
            t0 = time.perf_counter()
            spec = prepare(cfg)
            seconds = time.perf_counter() - t0
            again = time.perf_counter()
            prepare(cfg, log=lambda *a: None)
            cached = time.perf_counter() - again
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"RESULT prepare corpus={args.corpus} vocab={spec.vocab_size} fresh={seconds:.2f}s "
              f"cached={cached * 1e3:.1f}ms train_tokens={spec.n_train_tokens:,} val_tokens={spec.n_val_tokens:,} "
              f"train_docs={spec.n_train_docs:,} val_docs={spec.n_val_docs:,}")


if __name__ == "__main__":
    main()
