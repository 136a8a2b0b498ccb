"""The one way popsearch runs git as a subprocess (archive, agent, adopt, inbox): `git()` runs one command.

`RefTransactions` keeps one `git update-ref --stdin` open and applies each batch of ref updates atomically;
`write_object` writes a loose object the way git does, without a process per object."""
from __future__ import annotations

import hashlib
import os
import subprocess
import zlib
from pathlib import Path


class GitFailed(RuntimeError):
    """A git command failed; the message names the command, the folder and git's own words (also in .stderr)."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


def git(cwd, *args: str, stdin: str | bytes | None = None, binary: bool = False, check: bool = True,
        env: dict | None = None):
    """stdout of `git <args>` run in cwd (bytes when binary). A failure raises GitFailed, or returns None
    with check=False."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    done = subprocess.run(["git", *args], cwd=str(cwd), input=data, capture_output=True, env=env)
    if done.returncode != 0:
        if not check:
            return None
        why = done.stderr.decode(errors="replace").strip()
        raise GitFailed(f"git {' '.join(args)} in {cwd} failed: {why}", why)
    return done.stdout if binary else done.stdout.decode("utf-8", "replace")


def write_object(git_dir, kind: str, data: bytes) -> str:
    """A loose object as git writes one — zlib of "<kind> <size>\\0<data>" at objects/<2 hex>/<38 hex>, through a
    temp file (tmp_obj_*, git's own prefix: `git prune` clears one a kill left) renamed into place; its sha."""
    body = f"{kind} {len(data)}\0".encode("ascii") + data
    sha = hashlib.sha1(body).hexdigest()
    folder = Path(git_dir) / "objects" / sha[:2]
    path = folder / sha[2:]
    if path.exists():
        return sha
    folder.mkdir(exist_ok=True)
    temp = folder / f"tmp_obj_{os.getpid()}_{sha[2:10]}"
    try:
        temp.write_bytes(zlib.compress(body))
        temp.chmod(0o444)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return sha


class RefTransactions:
    """One `git update-ref --stdin` process kept open; apply() runs `start`, the lines, `commit` (all or nothing).

    A refused transaction (an old value that no longer matches, a ref that exists) makes git exit: the error
    is raised as GitFailed and the next apply() starts a fresh process."""

    def __init__(self, cwd):
        self.cwd = Path(cwd)
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(["git", "update-ref", "--stdin"], cwd=str(self.cwd), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self.proc

    def apply(self, lines: list[str]) -> None:
        """Apply `create|update|delete <ref> ...` lines as one transaction; GitFailed when git refuses it."""
        proc = self._start()
        try:
            proc.stdin.write("start\n" + "".join(line + "\n" for line in lines) + "commit\n")
            proc.stdin.flush()
            answers = [proc.stdout.readline(), proc.stdout.readline()]
        except (BrokenPipeError, OSError):
            answers = []
        if answers == ["start: ok\n", "commit: ok\n"]:
            return
        self._fail(lines)

    def _fail(self, lines: list[str]) -> None:
        proc, self.proc = self.proc, None
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.wait()
        why = proc.stderr.read().strip()
        proc.stderr.close()
        proc.stdout.close()
        raise GitFailed(f"git update-ref in {self.cwd} refused {'; '.join(lines)}: {why}")

    def close(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
            proc.wait()
