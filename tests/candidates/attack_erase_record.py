"""Attack: after a refused read of the validation split, erase the sandbox's record of it (truncate,
rewrite, remove), train normally, then leave with os._exit(0) so that the sandbox's final check never runs.

Expected: static check (open, os.truncate, os._exit); the guard refuses every change to the record, which
keeps its lines: the runner must read the record whatever the exit status -> invalid."""
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
RECORD = os.environ.get("POPSEARCH_VIOLATIONS", ".popsearch_violations")


def attempt(what, act):
    try:
        act()
        print(f"ERASED the record ({what})", flush=True)
    except OSError as exc:
        print(f"refused ({what}): {exc}", flush=True)


if __name__ == "__main__":
    attempt("read", lambda: open(VAL, "rb").read())
    attempt("truncate", lambda: os.truncate(RECORD, 0))
    attempt("rewrite", lambda: open(RECORD, "w").close())
    attempt("remove", lambda: os.remove(RECORD))
    train()
    os._exit(0)
