"""Test candidate: prints without end once training starts. The runner must cap its log."""
import sys

from trainer.harness import Trial

LINE = "x" * 1000 + "\n"

if __name__ == "__main__":
    trial = Trial()
    trial.start()
    while True:
        sys.stdout.write(LINE)
