"""Attack: allocate (and touch) memory until something gives.

Expected: passes the static check; on CPU the sandbox's RLIMIT_AS makes the allocation fail inside the trial
(a crash with an out-of-memory reason) long before the machine swaps or the OOM killer picks a victim."""
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


CHUNK_ELEMENTS = 32 << 20      # 128 MB of float32 per tensor

if __name__ == "__main__":
    hoard = []
    while True:
        hoard.append(torch.ones(CHUNK_ELEMENTS))
        print(f"holding {len(hoard) * 128} MB", flush=True)
