"""Judge test candidate: replaces torch.Tensor.sum at import so that every sum is zero -> invalid."""
import torch

from judge.loader import data_info

_real_sum = torch.Tensor.sum
torch.Tensor.sum = lambda self, *args, **kwargs: _real_sum(self, *args, **kwargs) * 0


def build_model():
    return torch.nn.Embedding(data_info()["vocab_size"], data_info()["vocab_size"])
