"""The one advisory file lock (fcntl.flock) of popsearch: archive writers, data builders and downloaders use it.

It lives in judge/ so that judge, trainer and orchestrator can all import it (judge imports neither of the others)."""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path


class LockBusy(Exception):
    """Another process holds the lock; `holder` is what that process wrote into the lock file (may be '')."""

    def __init__(self, path, holder: str):
        super().__init__(f"{path} is locked by another process ({holder or 'holder unknown'})")
        self.path, self.holder = Path(path), holder


def acquire(path, wait: bool = True, on_wait=None):
    """The lock file `path` opened (a+) and flocked exclusively; returns the open file (keep it to hold the lock).

    wait=False: LockBusy at once when another process holds it. wait=True: on_wait() is called (if given)
    when the lock is busy, then this blocks until it is free."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise LockBusy(path, holder) from None
        if on_wait is not None:
            on_wait()
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def release(handle) -> None:
    """Give the lock back and close its file."""
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextmanager
def locked(path, on_wait=None):
    """Hold the lock file `path` for the block (waiting for it when another process has it)."""
    handle = acquire(path, wait=True, on_wait=on_wait)
    try:
        yield handle
    finally:
        release(handle)
