"""Judge test candidate: returns logits as a tensor subclass (whose methods it controls) -> invalid."""
import torch

from judge.loader import data_info


class Sneaky(torch.Tensor):
    pass


class Model(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx):
        return self.emb(idx).as_subclass(Sneaky)


def build_model():
    return Model(data_info()["vocab_size"])
