"""Judge test candidate: re-registers the CPU kernel of aten::_log_softmax (all zeros, a perfect loss) -> invalid."""
import torch

from judge.loader import data_info

_lib = torch.library.Library("aten", "IMPL")
_lib.impl("_log_softmax", lambda x, dim, half_to_float: torch.zeros_like(x), "CPU")


def build_model():
    return torch.nn.Embedding(data_info()["vocab_size"], data_info()["vocab_size"])
