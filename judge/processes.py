"""The one process reaper: children started in a group of their own that die with the thread that started
them (PR_SET_PDEATHSIG), ended as a group; a trial's whole family found through /proc and killed.

A trial's processes may leave its group and session; the token in their environment still gives them away."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ENV_TOKEN = "POPSEARCH_TRIAL_TOKEN"   # marks every process of one trial (found again through /proc)
SCAN_INTERVAL = 0.2           # seconds between /proc scans for the trial's descendants
REAP_ROUNDS = 5               # kill-and-rescan rounds for leftover processes
REAP_WAIT = 10.0              # seconds to wait for killed processes to be reaped (zombies keep a group alive)
TICK = 0.05                   # seconds between kill rounds, and between checks that the group is gone
GROUP_GONE_WAIT = 5.0         # seconds end_group waits for a killed group's last members to disappear
PR_SET_PDEATHSIG = 1          # prctl option (linux/prctl.h): the signal a process gets when its parent dies


def new_token() -> str:
    """A fresh token for one trial; trial_env puts it in the environment as ENV_TOKEN."""
    return uuid.uuid4().hex


def _stat(pid: int) -> tuple | None:
    """(ppid, pgid, sid, starttime, state) of a live process, or None (gone, zombie or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    state = fields[0].decode()
    if state in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), state


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _has_token(pid: int, token: bytes) -> bool:
    try:
        return token in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def alive(pid: int, starttime: int | None = None) -> bool:
    info = _stat(pid)
    return info is not None and (starttime is None or info[3] == starttime)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _ancestors() -> set[int]:
    """This process and its ancestors: never killed, whatever a scan says."""
    seen, pid = set(), os.getpid()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        info = _stat(pid)
        pid = info[0] if info else 0
    return seen | {1}


class TrialFamily:
    """The trial's processes: its group and session, every descendant seen by a scan, and the env token."""

    def __init__(self, pid: int, token: str):
        self.root, self.token = pid, f"{ENV_TOKEN}={token}".encode()
        info = _stat(pid)
        self.members: dict[int, int] = {pid: info[3]} if info else {}
        self._next_scan = 0.0

    def scan(self, force: bool = False) -> None:
        """Record every live descendant of a known member (children of processes already recorded)."""
        now = time.monotonic()
        if not force and now < self._next_scan:
            return
        self._next_scan = now + SCAN_INTERVAL
        table = {pid: info for pid in _pids() if (info := _stat(pid)) is not None}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, pgid, sid, start, _) in table.items():
                parent_known = ppid in self.members and table.get(ppid, (0, 0, 0, None))[3] == self.members[ppid]
                if pid not in self.members and (parent_known or self.root in (pgid, sid)):
                    self.members[pid] = start
                    grew = True

    def leftovers(self) -> list[int]:
        """Live processes of this trial: recorded members, same group/session, or carrying the token."""
        keep = _ancestors()
        found = []
        for pid in _pids():
            info = _stat(pid)
            if info is None or pid in keep:
                continue
            ppid, pgid, sid, start, _ = info
            if (self.members.get(pid) == start or self.root in (pgid, sid) or _has_token(pid, self.token)):
                found.append(pid)
        return found

    def reap(self) -> list[int]:
        """Kill the group and every leftover; returns the pids killed after the group kill."""
        killed = []
        for _ in range(REAP_ROUNDS):
            kill_group(self.root)
            rest = self.leftovers()
            if not rest:
                break
            for pid in rest:
                kill_pid(pid)
            killed += rest
            time.sleep(TICK)
        self._wait_gone()
        return killed

    def _wait_gone(self) -> None:
        """Wait (bounded) until init has reaped the killed group, so that the pgid is really free."""
        deadline = time.monotonic() + REAP_WAIT
        while time.monotonic() < deadline:
            try:
                os.killpg(self.root, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(TICK)


def group_alive(pgid: int) -> bool:
    """True while any process of the group is running (zombies do not count)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    return any(info[1] == pgid for pid in _pids() if (info := _stat(pid)) is not None)


def end_group(proc: subprocess.Popen, grace: float = 0.0, wait: float = GROUP_GONE_WAIT) -> None:
    """End proc's whole process group: SIGTERM and up to `grace` seconds for proc to exit (when grace > 0),
    then SIGKILL to the group; proc is reaped and the group waited for (at most `wait` seconds)."""
    pgid = proc.pid
    if grace > 0 and proc.poll() is None:
        kill_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    kill_group(pgid)
    proc.wait()
    deadline = time.monotonic() + wait
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(TICK)


# ---------------------------------------------------------------- children that die with their parent

def _load_prctl():
    """libc's prctl, or None off Linux (or where libc cannot be loaded)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent_hook():
    """A preexec_fn for Popen: the child gets SIGKILL when the thread that started it ends (its process
    killed, a raylet's SIGKILL taking the actor down), and ends at once if that parent is already gone.
    None where prctl is not available (then only the group kill applies)."""
    if _PRCTL is None:
        return None
    prctl, parent, getppid, kill, getpid = _PRCTL, os.getpid(), os.getppid, os.kill, os.getpid
    option, sigkill = PR_SET_PDEATHSIG, int(signal.SIGKILL)

    def hook() -> None:           # runs in the child between fork and exec: nothing imported, little allocated
        prctl(option, sigkill, 0, 0, 0)
        if getppid() != parent:   # the parent died before prctl took effect
            kill(getpid(), sigkill)
    return hook


def spawn_group(cmd, **popen_args) -> subprocess.Popen:
    """Popen(cmd) as the leader of a new session and process group, killed when the starting thread ends.

    The kernel's "parent" of PR_SET_PDEATHSIG is the thread that forks: call this from the thread that
    waits for the child (as the runner, the judge and the agent proposer do), never from a short-lived one."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=die_with_parent_hook(), **popen_args)
