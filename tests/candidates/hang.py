"""Test candidate: starts training, spawns a child in its process group, then sleeps forever.

The runner must time it out and leave no process of its group alive."""
import subprocess
import sys
import time

from trainer.harness import Trial

if __name__ == "__main__":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    print(f"child pid {child.pid}", flush=True)
    trial = Trial()
    trial.start()
    while True:
        time.sleep(1)
