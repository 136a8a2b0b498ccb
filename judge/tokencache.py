"""The pre-tokenized token cache of one split: tokens.bin (raw, every doc starts with BOS), offsets.npy, meta.json.

Written once by prepare (tiktoken batch encoding on threads); read by the loader and the judge via memmap."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

TOKENS_FILE = "tokens.bin"
OFFSETS_FILE = "offsets.npy"
META_FILE = "meta.json"
ENCODE_BATCH_DOCS = 2048           # documents handed to tiktoken per call


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def write_split(enc, docs: list[str], folder: Path, bos_id: int, dtype: np.dtype) -> dict:
    """Tokenize docs into folder/{tokens.bin, offsets.npy, meta.json}; return the meta dict."""
    folder.mkdir(parents=True, exist_ok=True)
    threads = max(1, min(8, os.cpu_count() or 1))
    lengths = []
    with open(folder / TOKENS_FILE, "wb") as f:
        for i in range(0, len(docs), ENCODE_BATCH_DOCS):
            encoded = enc.encode_ordinary_batch(docs[i:i + ENCODE_BATCH_DOCS], num_threads=threads)
            block, block_lengths = _with_bos(encoded, bos_id, dtype)
            f.write(block.astype(dtype.newbyteorder("<"), copy=False).tobytes())
            lengths.extend(block_lengths)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(folder / OFFSETS_FILE, offsets)
    meta = {"vocab_size": enc.n_vocab, "bos_id": int(bos_id), "token_dtype": dtype.name,
            "n_tokens": int(offsets[-1]), "n_docs": len(lengths)}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def _with_bos(encoded: list[list[int]], bos_id: int, dtype: np.dtype) -> tuple[np.ndarray, list[int]]:
    lengths = [len(ids) + 1 for ids in encoded]
    flat = np.empty(sum(lengths), dtype=dtype)
    pos = 0
    for ids, n in zip(encoded, lengths):
        flat[pos] = bos_id
        flat[pos + 1:pos + n] = ids
        pos += n
    return flat, lengths


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a token cache split (no {META_FILE}; run `popsearch prepare`)")
    return json.loads(path.read_text())


def open_split(folder) -> tuple[np.ndarray, np.ndarray, dict]:
    """(tokens memmap, offsets int64 [n_docs+1], meta) of one split folder."""
    folder = Path(folder)
    meta = read_meta(folder)
    tokens = np.memmap(folder / TOKENS_FILE, dtype=np.dtype(meta["token_dtype"]).newbyteorder("<"),
                       mode="r", shape=(meta["n_tokens"],))
    offsets = np.load(folder / OFFSETS_FILE)
    if len(offsets) != meta["n_docs"] + 1 or offsets[-1] != meta["n_tokens"]:
        raise ValueError(f"{folder}: {OFFSETS_FILE} does not match {META_FILE} (corrupt token cache)")
    return tokens, offsets, meta
