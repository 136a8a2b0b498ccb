"""BPE tokenizer: trained with rustbpe, saved and loaded as a tiktoken Encoding plus per-token byte lengths.

Layout in DATA_DIR/tokenizer/: tokenizer.pkl (pickled Encoding params) and token_bytes.npy (int32 [vocab])."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import rustbpe
import tiktoken

BOS = "<|bos|>"                        # the one special token; its id is the last one (vocab_size - 1)
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}|"""
                 r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
TRAIN_DOC_CHARS = 10_000               # at most this much of each document feeds tokenizer training
TRAIN_TOTAL_CHARS = 200_000_000        # and at most this much text in all
ENCODING_NAME = "popsearch"
PARAMS_FILE = "tokenizer.pkl"
TOKEN_BYTES_FILE = "token_bytes.npy"


def train_encoding(texts, vocab_size: int) -> tiktoken.Encoding:
    """Train BPE on `texts` to vocab_size tokens in all (the last id is BOS)."""
    if vocab_size < 257 + 1:
        raise ValueError(f"data.vocab_size: {vocab_size} is too small (need >= 258: 256 bytes, 1 merge, BOS)")
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(_training_text(texts), vocab_size - 1, pattern=SPLIT_PATTERN)
    ranks = {bytes(b): r for b, r in tok.get_mergeable_ranks()}
    return make_encoding(ranks, tok.get_pattern())


def _training_text(texts):
    left = TRAIN_TOTAL_CHARS
    for text in texts:
        if left <= 0:
            return
        piece = text[:min(TRAIN_DOC_CHARS, left)]
        left -= len(piece)
        yield piece


def make_encoding(mergeable_ranks: dict, pat_str: str) -> tiktoken.Encoding:
    return tiktoken.Encoding(name=ENCODING_NAME, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                             special_tokens={BOS: len(mergeable_ranks)})


def save_encoding(enc: tiktoken.Encoding, folder: Path) -> None:
    """Write tokenizer.pkl and token_bytes.npy into folder (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = {"name": enc.name, "pat_str": enc._pat_str,
              "mergeable_ranks": enc._mergeable_ranks, "special_tokens": enc._special_tokens}
    with open(folder / PARAMS_FILE, "wb") as f:
        pickle.dump(params, f)
    np.save(folder / TOKEN_BYTES_FILE, token_byte_lengths(enc))


def token_byte_lengths(enc: tiktoken.Encoding) -> np.ndarray:
    """int32 [n_vocab]: UTF-8 byte length of every token, 0 for special tokens."""
    out = np.zeros(enc.n_vocab, dtype=np.int32)
    for token, rank in enc._mergeable_ranks.items():
        out[rank] = len(token)
    return out


def _tokenizer_dir(data_dir) -> Path:
    data_dir = Path(data_dir)
    return data_dir if (data_dir / PARAMS_FILE).exists() else data_dir / "tokenizer"


def load_encoding(data_dir) -> tiktoken.Encoding:
    """The tiktoken Encoding of a prepared DATA_DIR (or of its tokenizer/ folder itself)."""
    path = _tokenizer_dir(data_dir) / PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer here (run `popsearch prepare`)")
    with open(path, "rb") as f:
        params = pickle.load(f)
    return tiktoken.Encoding(**params)


def load_token_bytes(data_dir) -> np.ndarray:
    """int32 [vocab] byte lengths saved beside the tokenizer."""
    path = _tokenizer_dir(data_dir) / TOKEN_BYTES_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no token byte lengths here (run `popsearch prepare`)")
    return np.load(path)
