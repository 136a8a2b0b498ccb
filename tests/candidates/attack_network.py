"""Attack: open a TCP connection to 127.0.0.1 (to reach the driver, Ray, or exfiltrate).

Expected: static check (socket); the guard refuses the socket (Landlock also bars TCP connect) -> exit 86."""
import socket

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


if __name__ == "__main__":
    conn = socket.create_connection(("127.0.0.1", 6379), timeout=1)
    print("CONNECTED", flush=True)
    train()
