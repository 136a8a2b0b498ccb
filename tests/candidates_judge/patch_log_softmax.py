"""Judge test candidate: replaces torch.nn.functional.log_softmax at import (a perfect-looking loss) -> invalid."""
import torch
import torch.nn.functional as F

from judge.loader import data_info

F.log_softmax = lambda x, dim=-1, *args, **kwargs: torch.zeros_like(x)
torch.log_softmax = F.log_softmax


def build_model():
    return torch.nn.Embedding(data_info()["vocab_size"], data_info()["vocab_size"])
