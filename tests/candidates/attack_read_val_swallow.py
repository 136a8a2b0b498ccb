"""Attack: read the validation split three ways (open, numpy, torch's native reader), swallow every
refusal and train as if nothing happened.

Expected: static check (open, fromfile, from_file); the guard records the refused opens even though they
were swallowed (Landlock stops the native read) -> exit 86 (invalid) after a normal-looking run."""
import os

import numpy as np

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


VAL = os.path.join(os.path.dirname(os.environ["POPSEARCH_TRAIN_DIR"]), "val", "tokens.bin")


def try_read(how, read):
    try:
        data = read()
        print(f"LEAKED {len(data)} validation items through {how}", flush=True)
    except Exception as exc:
        print(f"refused ({how}): {type(exc).__name__}", flush=True)


if __name__ == "__main__":
    try_read("open", lambda: open(VAL, "rb").read())
    try_read("numpy", lambda: np.fromfile(VAL, dtype=np.uint16))
    try_read("torch", lambda: torch.from_file(VAL, size=16, dtype=torch.uint8))
    train()
