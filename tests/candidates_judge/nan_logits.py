"""Judge test candidate: a NaN in the logits of the last position -> invalid."""
import torch

from judge.loader import data_info


class Nan(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx):
        out = self.emb(idx).clone()
        out[:, -1, 0] = float("nan")
        return out


def build_model():
    return Nan(data_info()["vocab_size"])
