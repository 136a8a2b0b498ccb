"""Judge test candidate: a one-layer causal self-attention model (SDPA, is_causal) -> ok."""
import torch
import torch.nn.functional as F

from judge.loader import data_info

DIM = 32
HEADS = 2


class OneLayer(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, DIM)
        self.pos = torch.nn.Embedding(1024, DIM)
        self.qkv = torch.nn.Linear(DIM, 3 * DIM, bias=False)
        self.out = torch.nn.Linear(DIM, DIM, bias=False)
        self.norm = torch.nn.RMSNorm(DIM)
        self.head = torch.nn.Linear(DIM, vocab, bias=False)

    def forward(self, idx):
        B, T = idx.shape
        x = self.emb(idx) + self.pos(torch.arange(T, device=idx.device))
        q, k, v = self.qkv(self.norm(x)).view(B, T, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, DIM)
        return self.head(self.norm(x + self.out(y))).float()


def build_model():
    return OneLayer(data_info()["vocab_size"])
