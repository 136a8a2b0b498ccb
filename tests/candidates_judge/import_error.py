"""Judge test candidate: fails at import -> crash, with the line in the reason."""
import torch

VOCAB = 3
raise RuntimeError("broken candidate")


def build_model():
    return torch.nn.Embedding(VOCAB, VOCAB)
