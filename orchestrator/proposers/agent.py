"""The agent proposer: run a user's coding-agent command in a git worktree of a member head, collect train.py.

Plain functions with plain arguments (the driver wraps them as Ray tasks); the agent runs in its own process
group, is killed at its timeout, and anything it changes besides train.py rejects the proposal."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from judge.processes import end_group, spawn_group
from orchestrator.gitcmd import git
from orchestrator.proposers.base import TRAIN_PY, Proposal, clean_message, validate_source

STATUSES = ("ok", "timeout", "failed", "no_change", "rejected")
PLACEHOLDERS = ("{workdir}", "{program}", "{history}", "{prompt}", "{briefdir}")
LOG_TAIL_CHARS = 4000                    # of the agent's stdout and stderr kept in the outcome (and the ledger)
KILL_GRACE_SECONDS = 2.0                 # between SIGTERM and SIGKILL of the agent's process group
IGNORED_PARTS = ("__pycache__",)         # byproducts of running train.py, never counted as changes
IGNORED_SUFFIXES = (".pyc",)
FALLBACK_MESSAGE = "agent edit"
# Each CLI's documented non-interactive invocation: the prompt (brief + history + task) from {prompt}, file edits
# approved without asking and confined to the working folder (the worktree), nothing interactive.
PRESETS = {
    "claude": 'claude -p "$(cat {prompt})" --permission-mode acceptEdits '
              '--allowedTools "Read,Edit,Write,Glob,Grep,Bash(git diff:*),Bash(git commit:*)"',
    "codex": 'codex exec --sandbox workspace-write --cd {workdir} "$(cat {prompt})"',
    "gemini": 'gemini --approval-mode auto_edit --prompt "$(cat {prompt})"',
    "aider": "aider --message-file {prompt} --yes-always --no-gitignore --no-check-update --map-tokens 0 "
             "--chat-history-file {briefdir}/aider.chat.md --input-history-file {briefdir}/aider.input.md train.py",
    "opencode": 'opencode run "$(cat {prompt})"',
}
TASK = ("\n\n---\n\n# Your task\n\nYou work in the current directory, a git checkout of member {member}'s head. "
        "The brief above is the contract and history.md below is what this member has tried. Make one clear "
        "change to train.py that should lower val_bpb within the same budget, edit train.py in place (and "
        "optionally `git commit -am \"<idea and why>\"`), touch no other file, then exit.\n\n")
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "popsearch-agent", "GIT_AUTHOR_EMAIL": "agent@popsearch.invalid",
                "GIT_COMMITTER_NAME": "popsearch-agent", "GIT_COMMITTER_EMAIL": "agent@popsearch.invalid"}


@dataclass
class AgentOutcome:
    """What one agent run produced. source is the new train.py only when status is ok."""
    status: str                          # ok | timeout | failed | no_change | rejected
    source: str | None = None
    message: str = ""
    reason: str = ""
    log_tail: str = ""
    files: list = field(default_factory=list)    # offending paths when rejected for touching other files
    seconds: float = 0.0
    returncode: int | None = None
    usage: dict = field(default_factory=dict)    # ledger columns of what it cost (llm_* for endpoint proposals)


def command_for(agent: str, custom: str) -> str:
    """The command template of proposers.agent: a named CLI's preset, or agent_command for custom."""
    return custom if agent == "custom" else PRESETS[agent]


def prompt_text(program_md: str, history_text: str, member: str = "") -> str:
    """What a named CLI is asked: the brief, the task, then the member's history."""
    return program_md.rstrip("\n") + TASK.format(member=member or "this") + history_text


def _git(cwd, *args: str) -> str:
    return git(cwd, *args)          # GitFailed (a RuntimeError) names the command and git's words


def make_worktree(repo_path, sha: str, dest) -> Path:
    """A detached git worktree of `sha` at `dest` (which must not exist yet)."""
    dest = Path(dest)
    # --force: a worktree registered at dest by a run that was killed must not block this one
    _git(repo_path, "worktree", "add", "--detach", "--force", str(dest), sha)
    return dest


def remove_worktree(repo_path, dest) -> None:
    """Remove the worktree at `dest` and its bookkeeping, whatever the agent left in it."""
    removed = git(repo_path, "worktree", "remove", "--force", "--force", str(dest), check=False)
    if removed is None or Path(dest).exists():
        shutil.rmtree(dest, ignore_errors=True)
        git(repo_path, "worktree", "prune", check=False)


def format_command(template: str, workdir, program, history, prompt="", briefdir="") -> str:
    """The shell command: the template's {workdir} {program} {history} {prompt} {briefdir} replaced by quoted
    paths (other braces, e.g. ${HOME}, are left alone)."""
    values = {"{workdir}": workdir, "{program}": program, "{history}": history, "{prompt}": prompt,
              "{briefdir}": briefdir}
    command = template
    for key, value in values.items():
        command = command.replace(key, shlex.quote(str(value)))
    return command


def _run_command(command: str, workdir: Path, out: Path, err: Path, timeout: float,
                 env: dict) -> tuple[int | None, bool]:
    """(returncode, timed_out); the group is gone when this returns."""
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = spawn_group(command, shell=True, cwd=str(workdir), stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                           env=env)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_group(proc, grace=KILL_GRACE_SECONDS)
            return None, True
        end_group(proc)                        # children it left behind
        return code, False


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _ignored(path: str) -> bool:
    parts = path.split("/")
    return any(p in IGNORED_PARTS for p in parts) or path.endswith(IGNORED_SUFFIXES)


def changed_files(workdir, base: str) -> tuple[list[str], bool]:
    """(paths changed since `base` in the worktree: committed, staged, unstaged, untracked; whether
    train.py was deleted). Byproducts such as __pycache__ are left out."""
    diff = _git(workdir, "diff", "--no-renames", "--name-status", "-z", base).split("\0")
    pairs = list(zip(diff[0::2], diff[1::2]))
    untracked = [p for p in _git(workdir, "ls-files", "--others", "-z").split("\0") if p]
    paths = {p for _, p in pairs} | set(untracked)
    deleted = any(s.startswith("D") and p == TRAIN_PY for s, p in pairs)
    return sorted(p for p in paths if not _ignored(p)), deleted


def _commit_message(workdir, base: str) -> str:
    if _git(workdir, "rev-parse", "HEAD").strip() == base:
        return ""
    return _git(workdir, "log", "--reverse", "--format=%B", f"{base}..HEAD").strip()


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in _tail(path).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _collect(workdir: Path, base: str, out: Path) -> AgentOutcome:
    """Turn the worktree's state after the agent into an outcome."""
    files, deleted = changed_files(workdir, base)
    others = [f for f in files if f != TRAIN_PY]
    if others:
        return AgentOutcome("rejected", reason=f"agent changed files other than {TRAIN_PY}: {', '.join(others)}",
                            files=others)
    if deleted:
        return AgentOutcome("rejected", reason=f"agent deleted {TRAIN_PY}", files=[TRAIN_PY])
    if not files:
        return AgentOutcome("no_change", reason=f"agent left {TRAIN_PY} unchanged")
    source = (workdir / TRAIN_PY).read_text(encoding="utf-8", errors="replace")
    ok, why = validate_source(source)
    if not ok:
        return AgentOutcome("rejected", reason=why)
    message = clean_message(_commit_message(workdir, base) or _last_line(out), FALLBACK_MESSAGE)
    return AgentOutcome("ok", source=source, message=message)


def run_agent(command_template: str, workdir, program_md: str, history_text: str, timeout: float,
              env: dict | None = None, member: str = "") -> AgentOutcome:
    """Run the agent command in `workdir` (a git worktree of the member head) and collect its train.py.

    program.md, history.md and prompt.md (both with the task) are written to a brief folder outside the
    worktree and passed by path; the agent's output tail is kept in outcome.log_tail and usage['agent_log']."""
    workdir = Path(workdir).resolve()
    base = _git(workdir, "rev-parse", "HEAD").strip()
    brief = Path(tempfile.mkdtemp(prefix="popsearch-brief-"))
    started = time.monotonic()
    try:
        program, history = brief / "program.md", brief / "history.md"
        out, err = brief / "agent.out", brief / "agent.err"
        prompt = brief / "prompt.md"
        program.write_text(program_md)
        history.write_text(history_text)
        prompt.write_text(prompt_text(program_md, history_text, member))
        command = format_command(command_template, workdir, program, history, prompt, brief)
        run_env = {**GIT_IDENTITY, **(env if env is not None else os.environ),
                   "POPSEARCH_WORKDIR": str(workdir), "POPSEARCH_PROGRAM": str(program),
                   "POPSEARCH_HISTORY": str(history), "POPSEARCH_PROMPT": str(prompt)}
        code, timed_out = _run_command(command, workdir, out, err, timeout, run_env)
        tail = (_tail(out) + "\n" + _tail(err)).strip()[-LOG_TAIL_CHARS:]
        if timed_out:
            outcome = AgentOutcome("timeout", reason=f"agent killed at its {timeout:g}s timeout")
        elif code != 0:
            outcome = AgentOutcome("failed", reason=f"agent command exited with code {code}: {command}")
        else:
            try:
                outcome = _collect(workdir, base, out)
            except RuntimeError as exc:           # e.g. the agent broke the worktree's .git
                outcome = AgentOutcome("failed", reason=f"could not read the agent's changes: {exc}")
        outcome.log_tail, outcome.returncode = tail, code
        outcome.seconds = time.monotonic() - started
        outcome.usage = {"agent_seconds": round(outcome.seconds, 3), "agent_log": tail}
        return outcome
    finally:
        shutil.rmtree(brief, ignore_errors=True)


def run_agent_on_commit(repo_path, sha: str, command_template: str, program_md: str, history_text: str,
                        timeout: float, scratch_root=None, env: dict | None = None, member: str = "") -> AgentOutcome:
    """make_worktree + run_agent + remove_worktree: what one agent Ray task does."""
    root = Path(tempfile.mkdtemp(prefix="popsearch-agent-", dir=scratch_root))
    dest = root / "work"
    try:
        try:
            make_worktree(repo_path, sha, dest)
        except RuntimeError as exc:
            return AgentOutcome("failed", reason=f"could not prepare the agent's worktree: {exc}")
        return run_agent(command_template, dest, program_md, history_text, timeout, env=env, member=member)
    finally:
        remove_worktree(repo_path, dest)
        shutil.rmtree(root, ignore_errors=True)


def to_proposal(outcome: AgentOutcome, member: str, parent_commit: str) -> Proposal | None:
    """The outcome as a Proposal (None unless it is ok)."""
    if outcome.status != "ok":
        return None
    return Proposal(member=member, parent_commit=parent_commit, source=outcome.source, proposer="agent",
                    message=outcome.message, extra=dict(outcome.usage))
