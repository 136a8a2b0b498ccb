"""Test candidate: ignores its budget and keeps training three times as long, then finishes normally.

The runner's clock must catch it: status 'invalid' (trained past its budget) or 'timeout'."""
import time

import torch

from trainer.harness import Trial

OVERRUN = 3.0   # times the budget it trains for

if __name__ == "__main__":
    trial = Trial()
    model = torch.nn.Linear(4, 4)
    trial.start(model)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < OVERRUN * trial.budget_seconds:   # instead of `not trial.done()`
        trial.step(tokens=1, loss=1.0)
        time.sleep(0.01)
    trial.finish()
