"""Attack: leave a detached process behind (its own session, so a process-group kill misses it), first
through subprocess, then through os.fork; swallow the refusals and train.

Expected: static check (subprocess, sys, os.fork); the guard refuses both and records them -> exit 86
(invalid); no process is left (the runner also reaps the trial's whole family)."""
import os
import subprocess
import sys

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


SLEEPER = "import time; time.sleep(3600.25)"  # a marker the test looks for

if __name__ == "__main__":
    try:
        child = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
        print(f"SPAWNED pid {child.pid}", flush=True)
    except OSError as exc:
        print(f"spawn refused: {exc}", flush=True)
    try:
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", SLEEPER])
        print(f"SPAWNED pid {pid}", flush=True)
    except OSError as exc:
        print(f"fork refused: {exc}", flush=True)
    train()
