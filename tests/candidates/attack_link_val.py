"""Attack: reach the validation split through links made in the scratch folder: a symbolic link (followed
when opened) and a hard link (which no path check could see through once made), swallowing refusals.

Expected: static check (os.symlink, os.link, open); the guard resolves the symlink and refuses the open, and
refuses the hard link whose source lies outside the scratch folder -> exit 86 (invalid)."""
import os

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


def read_through(make, name):
    try:
        make(VAL, name)
        with open(name, "rb") as f:
            print(f"LEAKED {len(f.read())} bytes through {name}", flush=True)
    except OSError as exc:
        print(f"refused ({name}): {exc}", flush=True)


if __name__ == "__main__":
    read_through(os.symlink, "soft.bin")
    read_through(os.link, "hard.bin")
    train()
