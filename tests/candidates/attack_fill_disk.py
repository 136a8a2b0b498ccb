"""Attack: fill the disk from the scratch folder: files of 1 MB chunks, 64 MB each, without end.

Expected: static check (open); RLIMIT_FSIZE stops one large file, the sandbox's disk watchdog stops many
files -> exit 86 (invalid) with the reason "fills the disk"."""
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


CHUNK = b"x" * (1 << 20)
CHUNKS_PER_FILE = 64

if __name__ == "__main__":
    n = 0
    while True:
        with open(f"fill_{n}.bin", "wb") as f:
            for _ in range(CHUNKS_PER_FILE):
                f.write(CHUNK)
                f.flush()
        n += 1
