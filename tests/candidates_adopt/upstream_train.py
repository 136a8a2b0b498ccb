"""An upstream-style single-GPU script, written for popsearch's tests: top-level training, helpers from prepare.

A tiny GPT; torch.compile only on CUDA; trains until TIME_BUDGET by its own clock, then prints its own val_bpb."""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb

DEPTH = 1
N_EMBD = 32
N_HEAD = 2
DEVICE_BATCH_SIZE = 4
LEARNING_RATE = 0.003
WARMUP_STEPS = 2


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim, bias=False), nn.GELU(), nn.Linear(4 * dim, dim, bias=False))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (c,))).view(b, t, 3, self.heads, c // self.heads).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(F.rms_norm(x, (c,)))


class GPT(nn.Module):
    def __init__(self, vocab, dim, depth, heads, seq_len):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets=None, reduction="mean"):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(F.rms_norm(x, (x.shape[-1],))).float()
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), reduction=reduction)


torch.manual_seed(42)
device = "cuda" if torch.cuda.is_available() else "cpu"
tokenizer = Tokenizer.from_directory()
vocab_size = tokenizer.get_vocab_size()
model = GPT(vocab_size, N_EMBD, DEPTH, N_HEAD, MAX_SEQ_LEN).to(device)
if device == "cuda":
    model = torch.compile(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
x, y, epoch = next(train_loader)

t_start = time.time()
total_training_time = 0.0
step = 0
while True:
    t0 = time.time()
    loss = model(x, y)
    loss.backward()
    x, y, epoch = next(train_loader)
    lr_scale = min(1.0, (step + 1) / WARMUP_STEPS) * (1.0 - 0.9 * min(total_training_time / TIME_BUDGET, 1.0))
    for group in optimizer.param_groups:
        group["lr"] = LEARNING_RATE * lr_scale
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if step > WARMUP_STEPS:
        total_training_time += time.time() - t0
    step += 1
    if step > WARMUP_STEPS and total_training_time >= TIME_BUDGET:
        break

val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"num_steps:        {step}")
print(f"loss:             {float(loss):.4f}")
