"""Attack: walk the interpreter's frames up to the sandbox's bootstrap (through sys._getframe and a
traceback's tb_frame) to clear its record of violations and its frozen snapshot.

Expected: static check (sys, _getframe, tb_frame, f_back); the guard refuses frame access from the
candidate's code -> exit 86 (invalid)."""
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



def clear_records(frame):
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, dict) and "violations_list" in value:
                value["violations_list"].clear()
                value["frozen"] = {"spaces": {}, "files": {}}
                print("TAMPERED with the sandbox", flush=True)
        frame = frame.f_back


if __name__ == "__main__":
    try:
        clear_records(sys._getframe())
    except PermissionError as exc:
        print(f"frame walk refused: {exc}", flush=True)
        try:
            raise RuntimeError("find a frame")
        except RuntimeError as err:
            clear_records(err.__traceback__.tb_frame)
    train()
