"""The one FLOPs formula and the one MFU of popsearch: training FLOPs per token of a transformer, device peaks.

Dense weights cost 6 FLOPs per weight per token (embedding tables excluded: a lookup is no matmul); attention
costs 12 FLOPs per query channel per key it sees, each layer counted with its own window."""
from __future__ import annotations

FLOPS_PER_PARAM_TOKEN = 6          # forward (2) + backward (4) FLOPs per dense weight per token
ATTENTION_FLOPS = 12               # QK^T and AV, 2 FLOPs each per channel and key, x3 for the backward
# Dense bf16 peak FLOP/s by device name (first match wins: more specific names first).
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def matrix_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all of them but the weights of nn.Embedding tables (each once).
    torch is imported here, not at the top: the budget arithmetic imports this module's formula without it."""
    import torch
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in tables:
            seen.add(id(p))
            total += p.numel()
    return total


def attention_flops_per_token(layers, seq_len: int) -> float:
    """layers: [(query channels = heads x head dim, window)] with window = left context (-1 = the whole row);
    a window wider than the row counts as the row."""
    total = 0
    for channels, window in layers:
        span = seq_len if window is None or window < 0 else min(int(window), seq_len)
        total += ATTENTION_FLOPS * int(channels) * span
    return float(total)


def flops_per_token(model: torch.nn.Module, attention_layers, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matrix params + attention per layer with its window."""
    return FLOPS_PER_PARAM_TOKEN * matrix_params(model) + attention_flops_per_token(attention_layers, seq_len)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of the named device, None when the table does not know it (CPUs included)."""
    for key, flops in PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def mfu(per_token: float | None, tokens: int, seconds: float, device_name: str) -> float | None:
    """Model FLOPs utilisation: per_token x tokens / seconds / device peak; None when anything is unknown."""
    peak = peak_flops(device_name)
    if peak is None or not per_token or per_token <= 0 or seconds <= 0 or tokens <= 0:
        return None
    return per_token * tokens / seconds / peak
