"""Attack: swap the code of the fixed hand-off in place (hand_off.__code__), which the module's own name
still points to, so an identity check of the module would not see it.

Expected: static check (__code__); the guard refuses replacing a function's code -> exit 86 (invalid)."""
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



def lazy_hand_off(model, path=None):
    print("no weights today")


if __name__ == "__main__":
    hand_off.__code__ = lazy_hand_off.__code__
    train()
