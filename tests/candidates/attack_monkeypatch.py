"""Attack: monkeypatch the fixed helpers and torch: a cross_entropy that reports a tiny loss and a
hand_off that could save anything, then train normally.

Expected: static check (assignments to imported modules); the final identity check of the sandbox (run when
the weights are written, and again at exit) -> exit 86 (invalid)."""
import torch.nn.functional as F

import judge.handoff
import torch

from judge.handoff import hand_off
from judge.loader import TrainingBatches, data_info
from trainer.harness import Trial


def build_model():
    vocab = data_info()["vocab_size"]
    return torch.nn.Sequential(torch.nn.Embedding(vocab, 16), torch.nn.Linear(16, vocab))


def train():
    trial = Trial()
    torch.manual_seed(trial.seed)
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = TrainingBatches(4, 32, seed=trial.seed)
    trial.start(model)
    while not trial.done():
        x, y = next(batches)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        trial.step(tokens=x.numel(), loss=loss)
    trial.finish()
    hand_off(model)


REAL_CROSS_ENTROPY = F.cross_entropy


def small_loss(logits, targets, **kw):
    return REAL_CROSS_ENTROPY(logits, targets, **kw) * 0.01


if __name__ == "__main__":
    F.cross_entropy = small_loss
    judge.handoff.hand_off = hand_off
    judge.handoff.portable_state = lambda state: state
    train()
