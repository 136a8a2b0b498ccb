"""The judge's tamper checks: identity snapshots of torch/numpy/builtins/judge attributes, hooks and kernels
(restored after a candidate patched them), and the loss computation on fixed logits that must not change."""
from __future__ import annotations

import builtins
import contextlib
import json
import math
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

CANARY_SEED = 1234                # fixed logits on which the loss computation must give the same number twice
CANARY_SCALE = 3.0
CANARY_RTOL = 1e-9                # same kernels, same input: only the thread split of the final sum may differ
# Attributes that importing torch._dynamo legitimately rewraps (torch.compile, flex attention): not a patch.
LAZY_REWRAPPED = {"torch": {"manual_seed"}, "torch.nn.Module": {"__init__", "__setstate__"}}
# Operators of the loss computation whose kernel registrations must not change (torch.library overrides).
CHECKED_OPS = ("aten::_log_softmax", "aten::log_softmax.int", "aten::gather", "aten::sum", "aten::sum.dim_IntList",
               "aten::_to_copy", "aten::mul.Tensor", "aten::neg", "aten::isfinite", "aten::all", "aten::abs",
               "aten::max", "aten::sub.Tensor", "aten::copy_", "aten::_local_scalar_dense")
CHECKED_DISPATCH_KEYS = ("CPU", "CUDA", "Autograd", "Composite", "Autocast", "Python")
# Modules whose constants are compared by value too.
DEEP_CHECKED = ("judge.evaluate", "judge.integrity", "judge.run_judge", "judge.causality")
SIMPLE_VALUES = (bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset, types.MappingProxyType)


def _namespaces() -> dict:
    spaces = {"torch": torch, "torch.nn.functional": F, "torch.Tensor": torch.Tensor,
              "torch.nn.Module": torch.nn.Module, "builtins": builtins, "math": math, "json": json, "os": os, "numpy": np}
    spaces.update({n: m for n, m in list(sys.modules.items()) if n == "judge" or n.startswith("judge.")})
    return spaces


def _members(holder) -> dict:
    """A module's attributes, or every attribute a class resolves through its MRO (inherited ones included)."""
    if not isinstance(holder, type):
        return dict(vars(holder))
    return {name: _lookup(holder, name)[1] for name in dir(holder)}


def _lookup(holder, name: str) -> tuple[bool, object]:
    """(found, value) of holder.name, read from __dict__s only (no descriptor or __getattr__ runs)."""
    for space in holder.__mro__ if isinstance(holder, type) else (holder,):
        if name in vars(space):
            return True, vars(space)[name]
    return False, None


def _fingerprint(value, deep: bool):
    if isinstance(value, types.FunctionType):
        return id(value), id(value.__code__), id(value.__defaults__), id(value.__kwdefaults__)
    if deep and isinstance(value, SIMPLE_VALUES):
        return id(value), repr(value)
    return id(value)


def _dispatch_table() -> dict:
    dump = getattr(torch._C, "_dispatch_dump", None)
    table = {}
    for op in CHECKED_OPS if dump else ():
        try:
            lines = dump(op).splitlines()
        except Exception:
            continue
        table[op] = [ln for ln in lines if ln.startswith(CHECKED_DISPATCH_KEYS)]
    return table


def _global_state() -> dict:
    c = torch._C
    return {"torch function mode": getattr(c, "_len_torch_function_stack", lambda: 0)(),
            "torch dispatch mode": getattr(c, "_len_torch_dispatch_stack", lambda: 0)(),
            "sys.settrace": id(sys.gettrace()), "sys.setprofile": id(sys.getprofile()),
            "kernel registrations": _dispatch_table()}


class Snapshot:
    """Identities of torch/numpy/builtins/judge attributes and of torch's global hooks, taken before the
    candidate's code runs; changes() names what moved since, restore() puts attributes back."""

    def __init__(self):
        self.items = {}
        for space, holder in _namespaces().items():
            deep = space in DEEP_CHECKED
            skip = LAZY_REWRAPPED.get(space, ())
            for name, value in _members(holder).items():
                if name not in skip:
                    code = value.__code__ if isinstance(value, types.FunctionType) else None
                    own = name in vars(holder)
                    self.items[(space, name)] = (holder, value, code, own, _fingerprint(value, deep))
        self.state = _global_state()

    def changes(self) -> list[str]:
        moved = []
        for (space, name), (holder, _, _, _, fp) in self.items.items():
            found, now = _lookup(holder, name)
            if not found or _fingerprint(now, space in DEEP_CHECKED) != fp:
                moved.append(f"{space}.{name}")
        state = _global_state()
        moved += [key for key, value in self.state.items() if state.get(key) != value]
        return moved

    def restore(self) -> None:
        """Undo attribute patches and pushed torch modes (kernel registrations cannot be undone here)."""
        for (space, name), (holder, value, code, own, _) in self.items.items():
            with contextlib.suppress(Exception):
                if code is not None and value.__code__ is not code:
                    value.__code__ = code
                if _lookup(holder, name)[1] is value:
                    continue
                if own:
                    setattr(holder, name, value)
                else:
                    delattr(holder, name)
        c = torch._C
        while getattr(c, "_len_torch_function_stack", lambda: 0)() > self.state["torch function mode"]:
            c._pop_torch_function_stack()
        while getattr(c, "_len_torch_dispatch_stack", lambda: 0)() > self.state["torch dispatch mode"]:
            c._pop_torch_dispatch_stack()


def canary(vocab: int, seq_len: int, device: str, loss) -> float:
    """loss (evaluate's batch_nats) on fixed random logits: must give the same number before and after the candidate."""
    gen = torch.Generator().manual_seed(CANARY_SEED)
    logits = (torch.randn(1, seq_len, vocab, generator=gen) * CANARY_SCALE).to(device)
    targets = torch.randint(vocab, (1, seq_len), generator=gen).to(device)
    weight = torch.ones(1, seq_len, dtype=torch.float64, device=device)
    return loss(logits, targets, weight)
