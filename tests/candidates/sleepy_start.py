"""Test candidate: never reaches trial.start() (sleeps during its 'start-up').

The runner must time it out by its start-up allowance."""
import time

from trainer.harness import Trial

if __name__ == "__main__":
    trial = Trial()
    time.sleep(3600)
    trial.start()
