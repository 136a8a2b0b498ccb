"""Test candidate: spawns two detached grandchildren in their own sessions, one with a scrubbed environment.

They would outlive the trial; the runner must find and kill both. Their pids go to the log."""
import os
import subprocess
import sys
import time

from trainer.harness import Trial

SLEEPER = "import time; time.sleep(3600)"

if __name__ == "__main__":
    kept = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
    scrubbed = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True,
                                env={"PATH": "/usr/bin:/bin"})
    print(f"scratch holds {sorted(os.listdir('.'))}", flush=True)
    print(f"orphan pid {kept.pid}", flush=True)
    print(f"orphan pid {scrubbed.pid}", flush=True)
    trial = Trial()
    trial.start()
    while not trial.done():
        trial.step(tokens=1, loss=1.0)
        time.sleep(0.05)
    trial.finish()
