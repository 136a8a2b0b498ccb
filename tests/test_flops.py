"""The one FLOPs formula (trainer/flops.py): matrices without embedding tables, attention per layer by window.

Checked by hand counts on small modules and on the baseline's shapes, and against the MFU it feeds."""
from __future__ import annotations

import pytest
import torch

from trainer import flops


class TwoTables(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(100, 8)
        self.value = torch.nn.Embedding(100, 8)
        self.proj = torch.nn.Linear(8, 16, bias=False)
        self.head = torch.nn.Linear(16, 100, bias=True)
        self.tied = self.proj                              # a second name for one module: counted once


def test_matrix_params_leave_out_embedding_tables():
    assert flops.matrix_params(TwoTables()) == 8 * 16 + 16 * 100 + 100


def test_attention_counts_each_layer_by_its_window():
    assert flops.attention_flops_per_token([(64, -1)], 1024) == 12 * 64 * 1024
    assert flops.attention_flops_per_token([(64, 256)], 1024) == 12 * 64 * 256
    assert flops.attention_flops_per_token([(64, 4096)], 1024) == 12 * 64 * 1024     # wider than the row
    assert flops.attention_flops_per_token([(64, 256), (64, -1)], 1024) == 12 * 64 * (256 + 1024)


def test_baseline_flops_by_hand(tiny_train_py):
    import importlib.util
    spec = importlib.util.spec_from_file_location("tiny_flops", tiny_train_py)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    model = tiny.GPT(512)
    d, depth, T = tiny.MODEL_DIM, tiny.DEPTH, tiny.SEQ_LEN
    blocks = depth * (3 * d * d + d * d + 2 * tiny.MLP_RATIO * d * d)
    gates = len(model.ve_layers) * tiny.VE_GATE_CHANNELS * tiny.N_HEADS
    windows = tiny.layer_windows(depth, tiny.WINDOW_PATTERN, tiny.SHORT_WINDOW, T)
    attention = sum(12 * d * min(w, T) for w in windows)
    assert model.flops_per_token() == 6 * (blocks + gates + 512 * d) + attention


def test_mfu_from_flops_per_token():
    assert flops.mfu(1e9, 10**6, 1.0, "NVIDIA H200") == pytest.approx(1e15 / 989e12)
    assert flops.mfu(1e9, 10**6, 1.0, "cpu") is None
    assert flops.mfu(0.0, 10**6, 1.0, "NVIDIA H100 80GB HBM3") is None
