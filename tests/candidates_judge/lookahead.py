"""Judge test candidate: mixes in the embedding of the NEXT token (looks one token ahead) -> invalid."""
import torch
import torch.nn.functional as F

from judge.loader import data_info

DIM = 16


class PeekNext(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, DIM)
        self.head = torch.nn.Linear(2 * DIM, vocab)

    def forward(self, idx):
        x = self.emb(idx)
        nxt = F.pad(x[:, 1:], (0, 0, 0, 1))
        return self.head(torch.cat([x, nxt], dim=-1))


def build_model():
    return PeekNext(data_info()["vocab_size"])
