"""Judge test candidate: pushes a torch function mode at import (it could rewrite any torch call) -> invalid."""
import torch
from torch.overrides import TorchFunctionMode

from judge.loader import data_info


class Spy(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


Spy().__enter__()


def build_model():
    return torch.nn.Embedding(data_info()["vocab_size"], data_info()["vocab_size"])
