"""The protocol of an adopted single-GPU script (top-level training that imports from `prepare`), as the judge
sees it: recognising one, the judge's own `prepare` that stops it at its first data request, finding its model.

Shared by the trial side (trainer/adopted.py), which may import judge/, and by judge/evaluate.py."""
from __future__ import annotations

import ast
import types

import torch

from judge.source_tree import parsed

PREPARE = "prepare"                                   # the module name such a script imports its helpers from
PREPARE_NAMES = ("MAX_SEQ_LEN", "TIME_BUDGET", "Tokenizer", "make_dataloader", "evaluate_bpb")
TRAIN_SPLIT = "train"
NATIVE, ADOPTED = "native", "adopted"


def protocol(source: str) -> str:
    """ADOPTED when the script imports `prepare` at top level and defines no build_model(); else NATIVE."""
    try:
        tree = parsed(source)
    except (SyntaxError, ValueError):
        return NATIVE
    imports_prepare = defines_build = False
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module == PREPARE and not stmt.level:
            imports_prepare = True
        elif isinstance(stmt, ast.Import) and any(a.name == PREPARE for a in stmt.names):
            imports_prepare = True
        elif isinstance(stmt, ast.FunctionDef) and stmt.name == "build_model":
            defines_build = True
    return ADOPTED if imports_prepare and not defines_build else NATIVE


def plain_module(value) -> torch.nn.Module | None:
    """value as a plain nn.Module (torch.compile's wrapper unwrapped through `_orig_mod`), or None."""
    if not isinstance(value, torch.nn.Module):
        return None
    inner = vars(value).get("_modules", {}).get("_orig_mod")
    return inner if isinstance(inner, torch.nn.Module) else value


def module_models(namespace: dict) -> list[torch.nn.Module]:
    """The distinct plain nn.Modules bound to names of a module namespace, in binding order."""
    found, seen = [], set()
    for value in list(namespace.values()):
        model = plain_module(value)
        if model is not None and id(model) not in seen:
            seen.add(id(model))
            found.append(model)
    return found


def matching_model(namespace: dict, keys) -> torch.nn.Module | None:
    """The first module-level model whose state_dict keys are exactly `keys` (the handed-over weights)."""
    want = set(keys)
    for model in module_models(namespace):
        if set(torch.nn.Module.state_dict(model).keys()) == want:
            return model
    return None


class ModelReady(BaseException):
    """Raised in the judge by make_dataloader: the script has built its model and now asks for data."""


class JudgeTokenizer:
    """What a script reads of its tokenizer while it builds its model: vocabulary size and BOS id."""

    def __init__(self, vocab_size: int, bos_id: int):
        self.vocab_size, self.bos_id = int(vocab_size), int(bos_id)

    @classmethod
    def from_directory(cls, *args, **kwargs):
        return cls(cls.VOCAB_SIZE, cls.BOS_ID)

    VOCAB_SIZE = BOS_ID = 0          # set on the class judge_prepare() makes

    def get_vocab_size(self) -> int:
        return self.vocab_size

    def get_bos_token_id(self) -> int:
        return self.bos_id

    def encode(self, *args, **kwargs):
        raise RuntimeError("the judge builds the model only: encoding text is not available here")

    decode = encode


def judge_prepare(seq_len: int, vocab_size: int, bos_id: int, asked: list) -> types.ModuleType:
    """The `prepare` module a script imports inside the judge: make_dataloader appends the split to `asked`
    and raises ModelReady (the model is built); evaluate_bpb before that is an error."""
    tokenizer_class = type("Tokenizer", (JudgeTokenizer,), {"VOCAB_SIZE": int(vocab_size), "BOS_ID": int(bos_id)})
    module = types.ModuleType(PREPARE, "popsearch's judge-side prepare: builds the model, trains nothing")

    def make_dataloader(tokenizer, batch_size, seq, split=TRAIN_SPLIT, *args, **kwargs):
        asked.append(str(split))
        raise ModelReady()

    def evaluate_bpb(*args, **kwargs):
        raise RuntimeError("evaluate_bpb was called before any training data was asked for")

    module.MAX_SEQ_LEN, module.TIME_BUDGET = int(seq_len), 0.0
    module.Tokenizer, module.make_dataloader, module.evaluate_bpb = tokenizer_class, make_dataloader, evaluate_bpb
    return module
