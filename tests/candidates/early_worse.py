"""Test candidate: a learner that is clearly worse than any real one (a bigram model with a tiny learning rate).

Its loss stays near ln(vocab), far above a parent's curve: early stopping must stop it."""

import torch

from judge.loader import TrainingBatches, data_info
from trainer.harness import Trial

# --- hyperparameters ---
SEQ_LEN = 32
DEVICE_BATCH_SIZE = 4
LEARNING_RATE = 1e-6
# --- end hyperparameters ---


def build_model():
    vocab = data_info()["vocab_size"]
    return torch.nn.Sequential(torch.nn.Embedding(vocab, 16), torch.nn.Linear(16, vocab))


if __name__ == "__main__":
    trial = Trial()
    torch.manual_seed(trial.seed)
    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    batches = TrainingBatches(DEVICE_BATCH_SIZE, SEQ_LEN, seed=trial.seed)
    trial.start(model)
    while not trial.done():
        x, y = next(batches)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        trial.step(tokens=x.numel(), loss=loss)
    trial.finish()
