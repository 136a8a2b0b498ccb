"""Test candidate: starts training, then raises. The runner must report status 'crash' with the error as reason.

Not a real train.py: it only needs the harness."""
from trainer.harness import Trial

if __name__ == "__main__":
    trial = Trial()
    trial.start()
    trial.step(tokens=1, loss=5.0)
    raise RuntimeError("deliberate crash of test candidate crash.py")
