"""Baseline popsearch candidate: a small GPT trained for a fixed budget, then handed to the judge.

Rotary, QK-norm, ReLU² MLP, value embeddings, short/long sliding windows, logit soft-cap; Muon + AdamW."""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from judge.loader import TrainingBatches, data_info
from trainer.attention import attention, backend_name, prepare_attention
from trainer.flops import flops_per_token
from trainer.harness import Trial

# --- hyperparameters ---
# model
DEPTH = 8                      # transformer blocks
MODEL_DIM = 512                # residual stream width
N_HEADS = 4                    # attention heads; head dim = MODEL_DIM // N_HEADS
MLP_RATIO = 4                  # MLP hidden width = MLP_RATIO * MODEL_DIM
SEQ_LEN = 2048                 # training context length (tokens per row)
WINDOW_PATTERN = "SSSL"        # per-layer attention span, repeated over depth: S = SHORT_WINDOW, L = SEQ_LEN
SHORT_WINDOW = 512             # tokens of left context in "S" layers
VALUE_EMBED_EVERY = 2          # a value embedding on every k-th layer, counted back from the last
VE_GATE_CHANNELS = 32          # input channels that drive each value-embedding gate
ROPE_BASE = 10000.0            # rotary frequency base
LOGIT_SOFTCAP = 15.0           # logits = cap * tanh(logits / cap)
# batch
DEVICE_BATCH_SIZE = 32         # rows per forward/backward
TOTAL_BATCH_SIZE = 262144      # tokens per optimizer step (2**18); the rest is gradient accumulation
# optimizer
MATRIX_LR = 0.02               # Muon learning rate for 2-D hidden matrices
EMBED_LR = 0.2                 # AdamW: token and value embeddings
UNEMBED_LR = 0.004             # AdamW: output projection
SCALAR_LR = 0.02               # AdamW: gates and other small parameters
ADAM_BETAS = (0.8, 0.95)       # AdamW betas
WEIGHT_DECAY = 0.01            # decoupled weight decay on Muon matrices (scaled by the lr schedule)
MUON_MOMENTUM = 0.95           # Muon Nesterov momentum after its warm-up
MUON_MOMENTUM_START = 0.85     # ... and at the start
MUON_MOMENTUM_WARMUP = 0.1     # fraction of the budget over which the momentum rises
NS_STEPS = 5                   # Newton-Schulz iterations per Muon update
# schedule (fractions of the budget)
WARMUP_FRACTION = 0.02         # linear lr warm-up
COOLDOWN_FRACTION = 0.4        # linear lr cool-down at the end ...
FINAL_LR_FRACTION = 0.05       # ... to this fraction of the peak
# run
COMPILE = True                 # torch.compile the model (CUDA only)
SEED_OFFSET = 0                # added to the trial's seed
# --- end hyperparameters ---

LOG_EVERY = 25                 # print a progress line every this many steps
MAX_LEN_FACTOR = 4             # forward accepts up to this many times SEQ_LEN tokens (the judge's rows)
NS_COEFFS = (3.4445, -4.7750, 2.0315)   # quintic Newton-Schulz coefficients (Muon)


# ----------------------------------------------------------------------------- model

def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def layer_windows(depth, pattern, short, seq_len):
    """Left context of each layer's sliding window: 'S' -> short, 'L' -> seq_len (never beyond training)."""
    if not pattern or set(pattern) - {"S", "L"}:
        raise ValueError(f"WINDOW_PATTERN={pattern!r}: use only 'S' and 'L'")
    return [short if pattern[i % len(pattern)] == "S" else seq_len for i in range(depth)]


def rotary_tables(max_len, head_dim, base):
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


def apply_rotary(x, cos, sin):
    """x: (B, T, H, D); rotate the two halves of each head by position-dependent angles."""
    T = x.size(1)
    cos, sin = cos[:, :T].to(x.dtype), sin[:, :T].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, n_heads, window, has_value_embed):
        super().__init__()
        self.n_heads, self.head_dim, self.window = n_heads, dim // n_heads, window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        # value embedding gate: per head, from the first channels of the input; 2*sigmoid(0) = 1 at init
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, n_heads, bias=False) if has_value_embed else None

    def forward(self, x, ve, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).unbind(2)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_heads, self.head_dim)
        q, k = apply_rotary(norm(q), cos, sin), apply_rotary(norm(k), cos, sin)
        y = attention(q, k, v, causal=True, window_size=(self.window, 0))
        return self.proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, MLP_RATIO * dim, bias=False)
        self.proj = nn.Linear(MLP_RATIO * dim, dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim, n_heads, window, has_value_embed):
        super().__init__()
        self.attn = Attention(dim, n_heads, window, has_value_embed)
        self.mlp = MLP(dim)

    def forward(self, x, ve, cos, sin):
        x = x + self.attn(norm(x), ve, cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        if MODEL_DIM % N_HEADS or (MODEL_DIM // N_HEADS) % 2:
            raise ValueError(f"MODEL_DIM={MODEL_DIM} must split into N_HEADS={N_HEADS} heads of even size")
        if VE_GATE_CHANNELS > MODEL_DIM:
            raise ValueError(f"VE_GATE_CHANNELS={VE_GATE_CHANNELS} exceeds MODEL_DIM={MODEL_DIM}")
        self.vocab_size = vocab_size
        self.windows = windows = layer_windows(DEPTH, WINDOW_PATTERN, SHORT_WINDOW, SEQ_LEN)
        self.ve_layers = [i for i in range(DEPTH) if (DEPTH - 1 - i) % VALUE_EMBED_EVERY == 0]
        self.embed = nn.Embedding(vocab_size, MODEL_DIM)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab_size, MODEL_DIM) for i in self.ve_layers})
        self.blocks = nn.ModuleList(Block(MODEL_DIM, N_HEADS, windows[i], i in self.ve_layers)
                                    for i in range(DEPTH))
        self.lm_head = nn.Linear(MODEL_DIM, vocab_size, bias=False)
        cos, sin = rotary_tables(MAX_LEN_FACTOR * SEQ_LEN, MODEL_DIM // N_HEADS, ROPE_BASE)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        bound = (3 / MODEL_DIM) ** 0.5                     # uniform with std 1/sqrt(dim)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or "ve_gate" in name:
                p.zero_()                                  # residual branches start as identity
            elif name.startswith(("embed", "value_embeds")):
                p.normal_(0, 1)
            elif name.startswith("lm_head"):
                p.normal_(0, 0.001)
            else:
                p.uniform_(-bound, bound)

    def forward(self, idx, targets=None):
        """idx: (B, T) token ids, T <= 4 * SEQ_LEN. Returns float logits (B, T, vocab), or the mean
        cross-entropy when targets are given."""
        if idx.size(1) > self.cos.size(1):
            raise ValueError(f"sequence length {idx.size(1)} exceeds {self.cos.size(1)} (4 * SEQ_LEN)")
        x = norm(self.embed(idx))
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[str(i)](idx) if i in self.ve_layers else None
            x = block(x, ve, self.cos, self.sin)
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


    def flops_per_token(self):
        """Training FLOPs per token by trainer/flops.py (what popsearch's MFU and flops budgets count)."""
        return flops_per_token(self, [(MODEL_DIM, window) for window in self.windows], SEQ_LEN)


def build_model():
    """The model to train and to judge; vocab size from the training data's meta.json."""
    return GPT(data_info()["vocab_size"])


# ----------------------------------------------------------------------------- optimizer

def newton_schulz(G, steps=NS_STEPS):
    """Approximately orthogonalize G (U S V^T -> U S' V^T, S' near 1) with a quintic iteration."""
    a, b, c = NS_COEFFS
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-schulz: Nesterov momentum, then an orthogonalized update.
    Matrices of one shape are stacked and orthogonalized in one batched call."""

    def __init__(self, params, lr, momentum, weight_decay, orthogonalize=newton_schulz):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.orthogonalize = orthogonalize

    def same_shape_stacks(self, group):
        """The group's matrices that have gradients, in lists of one shape each."""
        stacks = {}
        for p in group["params"]:
            if p.grad is not None:
                stacks.setdefault(tuple(p.shape), []).append(p)
        return list(stacks.values())

    @torch.no_grad()
    def warm_up(self):
        """Compile the orthogonalization for every stacked shape, changing no parameter and no state."""
        for group in self.param_groups:
            for params in self.same_shape_stacks(group):
                self.orthogonalize(torch.stack([p.grad for p in params]))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for params in self.same_shape_stacks(group):
                grads = [p.grad for p in params]
                bufs = [self.state[p].setdefault("momentum", torch.zeros_like(p)) for p in params]
                torch._foreach_lerp_(bufs, grads, 1 - mom)
                update = self.orthogonalize(torch.stack([g.lerp(b, mom) for g, b in zip(grads, bufs)]))
                rows, cols = params[0].shape
                torch._foreach_mul_(params, 1 - lr * wd)
                torch._foreach_add_(params, list(update.to(params[0].dtype).unbind(0)),
                                    alpha=-lr * max(1.0, rows / cols) ** 0.5)


def make_optimizers(model, orthogonalize=newton_schulz):
    """Muon for the blocks' 2-D matrices; AdamW for embeddings, the output layer and the gates."""
    matrices = [p for n, p in model.blocks.named_parameters() if p.ndim == 2 and "ve_gate" not in n]
    scalars = [p for n, p in model.blocks.named_parameters() if p.ndim != 2 or "ve_gate" in n]
    embeds = [model.embed.weight, *model.value_embeds.parameters()]
    dim_scale = (768 / MODEL_DIM) ** 0.5                 # AdamW lrs were tuned at width 768
    groups = [dict(params=embeds, lr=EMBED_LR * dim_scale),
              dict(params=[model.lm_head.weight], lr=UNEMBED_LR * dim_scale),
              dict(params=scalars, lr=SCALAR_LR)]
    fused = next(model.parameters()).is_cuda
    adam = torch.optim.AdamW(groups, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0, fused=fused)
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY,
                orthogonalize=orthogonalize)
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    """Warm-up, constant, then a linear cool-down to FINAL_LR_FRACTION, all in fractions of the budget."""
    if progress < WARMUP_FRACTION:
        return (progress + 1e-3) / (WARMUP_FRACTION + 1e-3)
    cooldown_start = 1 - COOLDOWN_FRACTION
    if progress < cooldown_start:
        return 1.0
    t = min(1.0, (progress - cooldown_start) / max(COOLDOWN_FRACTION, 1e-9))
    return 1 - t * (1 - FINAL_LR_FRACTION)


def apply_schedule(optimizers, progress):
    mult = lr_multiplier(progress)
    warm = min(1.0, progress / MUON_MOMENTUM_WARMUP) if MUON_MOMENTUM_WARMUP > 0 else 1.0
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * mult
            if isinstance(opt, Muon):
                group["momentum"] = MUON_MOMENTUM_START + warm * (MUON_MOMENTUM - MUON_MOMENTUM_START)


# ----------------------------------------------------------------------------- training

def accumulation_steps():
    tokens_per_micro = DEVICE_BATCH_SIZE * SEQ_LEN
    if TOTAL_BATCH_SIZE % tokens_per_micro:
        raise ValueError(f"TOTAL_BATCH_SIZE={TOTAL_BATCH_SIZE} is not a multiple of "
                         f"DEVICE_BATCH_SIZE * SEQ_LEN = {tokens_per_micro}")
    return TOTAL_BATCH_SIZE // tokens_per_micro


def train_step(model, batches, accum, autocast):
    """Forward/backward over `accum` micro-batches; returns the mean loss as a tensor (no sync)."""
    total = 0.0
    for _ in range(accum):
        inputs, targets = next(batches)
        with autocast:
            loss = model(inputs, targets)
        (loss / accum).backward()
        total = total + loss.detach() / accum
    return total


def main():
    trial = Trial()
    torch.manual_seed(trial.seed + SEED_OFFSET)
    on_cuda = trial.device_type == "cuda"
    model = build_model().to(trial.device)
    compiled = COMPILE and on_cuda
    orthogonalize = torch.compile(newton_schulz, dynamic=False) if compiled else newton_schulz
    optimizers = make_optimizers(model, orthogonalize)
    prepare_attention(SEQ_LEN, {(window, 0) for window in model.windows}, trial.device)
    train_model = torch.compile(model, dynamic=False, fullgraph=True) if compiled else model
    accum = accumulation_steps()
    batches = TrainingBatches(DEVICE_BATCH_SIZE, SEQ_LEN, device=trial.device, seed=trial.seed + SEED_OFFSET)
    autocast = torch.autocast(device_type=trial.device_type, dtype=torch.bfloat16, enabled=on_cuda)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params: {n_params:,}  accumulation: {accum}  device: {trial.device}  compile: {compiled}  "
          f"attention: {backend_name(trial.device_type)}")

    # warm-up (compile) outside the budget: one forward/backward and one orthogonalization per stacked shape
    t0 = time.perf_counter()
    train_step(train_model, batches, 1, autocast)
    optimizers[1].warm_up()
    model.zero_grad(set_to_none=True)
    print(f"warm-up: {time.perf_counter() - t0:.1f}s")

    trial.start(model, flops_per_token=model.flops_per_token())
    progress, step, t_log, loss = 0.0, 0, time.perf_counter(), torch.tensor(float("nan"))
    while not trial.done():
        apply_schedule(optimizers, progress)
        loss = train_step(train_model, batches, accum, autocast)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        progress = trial.step(tokens=TOTAL_BATCH_SIZE, loss=loss)
        step += 1
        if step % LOG_EVERY == 0:
            now = time.perf_counter()
            tok_s = LOG_EVERY * TOTAL_BATCH_SIZE / (now - t_log)
            print(f"step {step:5d}  progress {progress:6.1%}  loss {loss.item():.4f}  tok/s {tok_s:,.0f}")
            t_log = now
    final = trial.finish(backend=backend_name(trial.device_type), loss=float(loss.item()), params=n_params)
    print(f"done: {final['steps']} steps, {final['tokens']:,} tokens in {final['train_seconds']:.1f}s, "
          f"final loss {final['loss']:.4f}, peak vram {final['peak_vram_mb']:.0f} MB, backend {final['backend']}")


if __name__ == "__main__":
    main()
