"""Attack: slow down the process's own clocks (time.perf_counter, time.time, time.monotonic) four-fold so
that the harness believes the budget lasts four times longer.

Expected: static check (assignments to time.*); the sandbox's identity check -> exit 86, and the runner's own
clock sees training past the budget (invalid or timeout)."""
import time

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


SLOWDOWN = 4.0


def slowed(real):
    origin = real()
    return lambda: origin + (real() - origin) / SLOWDOWN


if __name__ == "__main__":
    time.perf_counter = slowed(time.perf_counter)
    time.time = slowed(time.time)
    time.monotonic = slowed(time.monotonic)
    train()
