"""Judge test candidate: returns one logit too few per position -> invalid."""
import torch

from judge.loader import data_info


class Short(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab - 1)

    def forward(self, idx):
        return self.emb(idx)


def build_model():
    return Short(data_info()["vocab_size"])
