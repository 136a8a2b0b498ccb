"""Prepare DATA_DIR = CACHE/data/<fingerprint>/: corpus split, tokenizer, token cache and spec.json.

Idempotent, atomic (built in a temp dir, then renamed) and safe under concurrent callers (fcntl lock)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from judge import file_lock
from judge.corpus import load_corpus
from judge.spec import DataConfig, DataSpec
from judge.tokencache import token_dtype, write_split
from judge.tokenizer import BOS, save_encoding, train_encoding

PARQUET_DOCS_PER_FILE = 50_000     # corpus/<split>/part_XXXXX.parquet rows per file
TMP_PREFIX = ".tmp-"
DIR_MODE = 0o755                   # mkdtemp makes 0700; the prepared dir is read by other users' trials


def prepare(cfg: DataConfig, log=print) -> DataSpec:
    """Return the DataSpec of cfg's prepared data, building it first if it is not in the cache."""
    final = cfg.data_dir()
    if (final / "spec.json").exists():
        return _load(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f"{final.name}.lock", log):
        if (final / "spec.json").exists():
            log(f"prepare: {final} was built by another process")
            return _load(final)
        _clear_leftovers(final)
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}{TMP_PREFIX}", dir=final.parent))
        os.chmod(tmp, DIR_MODE)
        try:
            spec = _build(cfg, tmp, final, log)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return spec


def _load(final: Path) -> DataSpec:
    """spec.json, with data_dir pointing where the cache is now (it may be mounted elsewhere)."""
    spec = DataSpec.load(final)
    spec.data_dir = str(final)
    return spec


def _locked(path: Path, log):
    return file_lock.locked(path, on_wait=lambda: log(f"prepare: waiting for another process building "
                                                          f"{path.with_suffix('')}"))


def _clear_leftovers(final: Path) -> None:
    """Under the lock: remove temp dirs of crashed builds and a final dir without spec.json."""
    for stale in final.parent.glob(f"{final.name}{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)


def _build(cfg: DataConfig, tmp: Path, final: Path, log) -> DataSpec:
    t0 = time.perf_counter()
    log(f"prepare: corpus {cfg.corpus!r}, vocab {cfg.vocab_size} -> {final}")
    corpus = load_corpus(cfg, cfg.cache_root(), log=log)
    log(f"prepare: corpus split: train {len(corpus.train):,} docs ({_chars(corpus.train)}), "
        f"val {len(corpus.val):,} docs ({_chars(corpus.val)}) [{time.perf_counter() - t0:.1f}s]")
    for split, docs in (("train", corpus.train), ("val", corpus.val)):
        write_corpus_parquet(docs, tmp / "corpus" / split)

    t1 = time.perf_counter()
    enc = train_encoding(corpus.train, cfg.vocab_size)
    save_encoding(enc, tmp / "tokenizer")
    bos_id = enc.encode_single_token(BOS)
    log(f"prepare: tokenizer trained: {enc.n_vocab} tokens, BOS id {bos_id} [{time.perf_counter() - t1:.1f}s]")
    if enc.n_vocab < cfg.vocab_size:
        log(f"prepare: note: the training text allows only {enc.n_vocab} of data.vocab_size={cfg.vocab_size} "
            f"tokens (no more merges); train/meta.json records {enc.n_vocab}")

    t2 = time.perf_counter()
    dtype = token_dtype(enc.n_vocab)
    metas = {split: write_split(enc, docs, tmp / split, bos_id, dtype)
             for split, docs in (("train", corpus.train), ("val", corpus.val))}
    log(f"prepare: token cache: train {metas['train']['n_tokens']:,} tokens, "
        f"val {metas['val']['n_tokens']:,} tokens ({dtype.name}) [{time.perf_counter() - t2:.1f}s]")

    spec = DataSpec(data_dir=str(final), fingerprint=cfg.fingerprint(), corpus=cfg.corpus,
                    vocab_size=enc.n_vocab, bos_id=int(bos_id), token_dtype=dtype.name,
                    n_train_tokens=metas["train"]["n_tokens"], n_val_tokens=metas["val"]["n_tokens"],
                    n_train_docs=metas["train"]["n_docs"], n_val_docs=metas["val"]["n_docs"],
                    extra={"config": dataclasses.asdict(cfg), "corpus_info": corpus.info,
                           "prepare_seconds": round(time.perf_counter() - t0, 2)})
    (tmp / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))
    log(f"prepare: done in {time.perf_counter() - t0:.1f}s")
    return spec


def write_corpus_parquet(docs: list[str], folder: Path) -> None:
    """The split's documents as parquet files with one `text` column."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(range(0, max(len(docs), 1), PARQUET_DOCS_PER_FILE)):
        table = pa.table({"text": pa.array(docs[i:i + PARQUET_DOCS_PER_FILE], type=pa.string())})
        pq.write_table(table, folder / f"part_{n:05d}.parquet", compression="zstd")


def _chars(docs: list[str]) -> str:
    return f"{sum(map(len, docs)) / 1e6:.2f}M chars"
