"""Judge test candidate: a tiny causal model (token embedding + running mean of the prefix).

Its training block must never run inside the judge."""
import torch

from judge.loader import data_info

DIM = 16
LOGIT_SCALE = 4.0      # spreads the random-init logits so that the metric test is not flat


class PrefixMean(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, DIM)
        self.mix = torch.nn.Linear(DIM, DIM)
        self.head = torch.nn.Linear(2 * DIM, vocab)

    def context(self, x):
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return x.cumsum(1) / steps

    def forward(self, idx):
        x = self.emb(idx)
        h = torch.cat([x, torch.tanh(self.mix(self.context(x)))], dim=-1)
        return LOGIT_SCALE * self.head(h)


def build_model():
    return PrefixMean(data_info()["vocab_size"])


if __name__ == "__main__":
    raise SystemExit("the judge ran the training block of train.py")
