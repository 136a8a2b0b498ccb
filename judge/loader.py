"""The training loader handed to candidates: BOS-aligned best-fit packing of whole documents, no padding.

Reads only the training split ($POPSEARCH_TRAIN_DIR) through a memmap; planning in Python, copies in numpy."""
from __future__ import annotations

import os
from bisect import bisect_right
from pathlib import Path

import numpy as np
import torch

from judge.spec import ENV_TRAIN_DIR
from judge.tokencache import open_split, read_meta

BUFFER_DOCS = 1000          # shuffled documents the packer chooses from (best fit among these)
ORDER_CHUNK = 4096          # documents of the epoch order turned into Python ints at a time
_TORCH_DTYPES = {"uint16": torch.uint16, "uint32": torch.uint32}


def resolve_train_dir(train_dir=None) -> Path:
    """train_dir, else $POPSEARCH_TRAIN_DIR; a clear error when neither names a token cache split."""
    if train_dir is None:
        train_dir = os.environ.get(ENV_TRAIN_DIR)
        if not train_dir:
            raise RuntimeError(f"{ENV_TRAIN_DIR} is not set: the training data folder is unknown "
                               f"(the trial runner sets it; or pass train_dir=...)")
    path = Path(train_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"training data folder {path} does not exist (from {ENV_TRAIN_DIR} or train_dir)")
    return path


def data_info(train_dir=None) -> dict:
    """train/meta.json: vocab_size, bos_id, token_dtype, n_tokens, n_docs."""
    return read_meta(resolve_train_dir(train_dir))


class TrainingBatches:
    """Infinite iterator of (inputs, targets) int64 tensors of shape (B, T); targets = inputs shifted by one.

    Every row starts with BOS: rows are filled with whole documents, each time the largest that fits the
    space left, taken from a buffer of shuffled documents; when none fits, the shortest is cropped to fill
    the row exactly. Epochs reshuffle the document order with seed + epoch."""

    def __init__(self, batch_size: int, seq_len: int, device="cpu", seed: int = 0, train_dir=None):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"TrainingBatches: batch_size and seq_len must be >= 1 (got {batch_size}, {seq_len})")
        tokens, offsets, self.meta = open_split(resolve_train_dir(train_dir))
        self.tokens = tokens.view(np.ndarray)
        self.doc_starts = offsets[:-1]
        self.doc_lengths = np.diff(offsets)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.device = torch.device(device)
        self.seed = seed
        self.epoch = 0
        self.tokens_served = 0
        self.batches_served = 0
        self._order_ids, self._order_lens, self._order_pos = [], [], 0
        self._epoch_order = self._shuffle(0)
        self._epoch_pos = 0
        self._buf_lens, self._buf_ids = [], []
        for _ in range(min(BUFFER_DOCS, len(self.doc_lengths))):
            self._take_into_buffer()
        self._row_positions = np.arange(batch_size * (seq_len + 1), dtype=np.int64)

    def __iter__(self):
        return self

    def __next__(self):
        ids, lens = self._plan()
        rows = self._gather(ids, lens).reshape(self.batch_size, self.seq_len + 1)
        self.tokens_served += self.batch_size * self.seq_len
        self.batches_served += 1
        return self._to_tensors(rows)

    # -------------------------------------------------------------- document order
    def _shuffle(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(len(self.doc_lengths))

    def _next_doc(self) -> tuple[int, int]:
        if self._order_pos == len(self._order_ids):
            if self._epoch_pos == len(self._epoch_order):
                self.epoch += 1
                self._epoch_order, self._epoch_pos = self._shuffle(self.epoch), 0
            chunk = self._epoch_order[self._epoch_pos:self._epoch_pos + ORDER_CHUNK]
            self._epoch_pos += len(chunk)
            self._order_ids, self._order_lens = chunk.tolist(), self.doc_lengths[chunk].tolist()
            self._order_pos = 0
        i = self._order_pos
        self._order_pos += 1
        return self._order_ids[i], self._order_lens[i]

    def _take_into_buffer(self) -> None:
        doc, length = self._next_doc()
        j = bisect_right(self._buf_lens, length)
        self._buf_lens.insert(j, length)
        self._buf_ids.insert(j, doc)

    # -------------------------------------------------------------- packing
    def _plan(self) -> tuple[list[int], list[int]]:
        """Document ids and token counts, row after row, that fill B rows of T+1 tokens exactly."""
        row = self.seq_len + 1
        buf_lens, buf_ids = self._buf_lens, self._buf_ids
        ids, lens = [], []
        for _ in range(self.batch_size):
            space = row
            while space:
                i = bisect_right(buf_lens, space) - 1
                if i >= 0:                          # the largest whole document that fits
                    n = buf_lens.pop(i)
                else:                               # nothing fits: crop the shortest to fill the row
                    i, n = 0, space
                    buf_lens.pop(0)
                ids.append(buf_ids.pop(i))
                lens.append(n)
                space -= n
                self._take_into_buffer()
        return ids, lens

    def _gather(self, ids: list[int], lens: list[int]) -> np.ndarray:
        starts = self.doc_starts[ids]
        lens = np.asarray(lens, dtype=np.int64)
        out_starts = np.cumsum(lens) - lens
        index = np.repeat(starts - out_starts, lens) + self._row_positions
        return self.tokens[index]

    def _to_tensors(self, rows: np.ndarray):
        if self.device.type == "cuda":                 # ship the small dtype, widen on the GPU
            host = torch.empty(rows.shape, dtype=_TORCH_DTYPES[rows.dtype.name], pin_memory=True)
            host.numpy()[...] = rows
            rows_dev = host.to(self.device, non_blocking=True).long()
            return rows_dev[:, :-1].contiguous(), rows_dev[:, 1:].contiguous()
        pair = np.empty((2, self.batch_size, self.seq_len), dtype=np.int64)
        np.copyto(pair[0], rows[:, :-1], casting="unsafe")
        np.copyto(pair[1], rows[:, 1:], casting="unsafe")
        inputs, targets = torch.from_numpy(pair)
        if self.device.type != "cpu":
            return inputs.to(self.device), targets.to(self.device)
        return inputs, targets
