"""The one process reaper (judge/processes.py) for real: a child started through spawn_group dies with the
process that started it (PR_SET_PDEATHSIG) when that one is SIGKILLed, and end_group ends a whole group."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from judge.processes import alive, end_group, group_alive, spawn_group

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A parent (in the role of a trial actor) that starts a long-lived child through the real helper, from a
# worker thread that waits for it as the runner's does, prints the child's pid and sleeps.
PARENT = """
import sys, threading, time
from judge.processes import spawn_group

def start():
    child = spawn_group([sys.executable, "-c", "import time; time.sleep(120)"])
    print(child.pid, flush=True)
    child.wait()

threading.Thread(target=start).start()
time.sleep(120)
"""


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_sigkilled_parent():
    env = dict(os.environ, PYTHONPATH=REPO)
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env)
    child = 0
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.3)
        assert alive(child) and os.getpgid(child) == child          # running, the leader of its own group
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_for(lambda: not alive(child)), f"child {child} outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()
        if child and alive(child):
            os.kill(child, signal.SIGKILL)           # only when the test failed: leave nothing behind


def test_end_group_kills_what_the_leader_left_behind():
    """The leader exits at once; the grandchild it left in the group is killed and gone when end_group returns."""
    proc = spawn_group(["sh", "-c", "sleep 120 & echo $!"], stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    proc.wait()
    assert alive(grandchild) and group_alive(proc.pid)
    end_group(proc)
    assert not group_alive(proc.pid) and not alive(grandchild)


def test_end_group_asks_first_when_given_a_grace_period(tmp_path):
    """With a grace period the group gets SIGTERM first: a leader that traps it records it and exits."""
    mark = tmp_path / "term"
    proc = spawn_group(["sh", "-c", f"trap 'echo term > {mark}; exit 0' TERM; while :; do sleep 0.05; done"])
    time.sleep(0.3)
    end_group(proc, grace=5.0)
    assert mark.read_text().strip() == "term" and proc.returncode == 0 and not group_alive(proc.pid)
