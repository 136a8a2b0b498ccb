"""The population's git archive: a branch pop/<member> per member, one commit per candidate, its record in trailers.

Also refs/pending/<id> (proposed), refs/trials/<id> (judged), refs/retired/<m>, refs/inbox/*, refs/popsearch/lineage."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import git
from git.objects.fun import tree_entries_from_data, tree_to_stream
from gitdb import IStream

from orchestrator import ledger
from orchestrator.fingerprint import source_hash  # noqa: F401  (re-exported: callers import it from here)
from orchestrator.trailers import compose_message, completed_row, judged_trailers, parse_message, pending_trailers

SOURCE_FILE = "train.py"
SEED_BRANCH = "seed"                       # the root commit; HEAD points here and it never moves
SEED_REF = "refs/heads/" + SEED_BRANCH
BRANCHES = "refs/heads/pop/"
PENDING = "refs/pending/"
TRIALS = "refs/trials/"
RETIRED = "refs/retired/"
INBOX = "refs/inbox/"
LINEAGE_REF = "refs/popsearch/lineage"     # a chain of event commits: create, fork, retire
IMPORTED = "refs/imported/"                # an adopted project's discarded and crashed runs (orchestrator/adopt.py)
IMPORTED_TRAILER = "Imported-From"         # on every commit brought in from an adopted project
LOCK_FILE = ".lock"
MARKER = ("popsearch", "archive")          # git config popsearch.archive = FORMAT_VERSION
FORMAT_VERSION = "1"
EXCLUDES = ("/ledger/", "/ledger.*/", "/report/", "/.lock", "/.ledger*")
ACTOR = git.Actor("popsearch", "popsearch@localhost")
ZERO_SHA = "0" * 40
FILE_MODE = 0o100644
BLOB_MODES = (0o100644, 0o100755)
MAX_SOURCE_BYTES = 1_000_000
SHORT = 10
TRIAL_ID_DIGITS = 5


class ArchiveError(Exception):
    """Something about the archive is wrong; the message names the archive, ref or trial."""


class ArchiveLocked(ArchiveError):
    """Another driver holds the archive's lock (or created the archive at the same moment)."""


class NotAnArchive(ArchiveError):
    """The folder is missing, or is not a popsearch archive."""


class HeadMoved(ArchiveError):
    """A promotion was asked for but the member's branch is no longer where the caller expected."""


class Pending(NamedTuple):
    trial_id: str
    sha: str
    member: str
    parent: str
    proposer: str
    message: str


class LineageEntry(NamedTuple):
    member: str
    forked_from: str | None
    created_at: float
    retired_at: float | None


def _tree_order(entry) -> bytes:
    name = entry[2].encode("utf-8") if isinstance(entry[2], str) else entry[2]
    return name + b"/" if entry[1] >> 12 == 4 else name


def _acquire_lock(path: Path):
    """An exclusive flock on ARCHIVE/.lock holding our pid; ArchiveLocked when another process has it."""
    handle = _locked_handle(path)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _locked_handle(path: Path):
    """ARCHIVE/.lock opened and flocked (exclusive, non-blocking); ArchiveLocked naming the holder's pid."""
    handle = open(path / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ArchiveLocked(f"{path} is in use by another popsearch driver (pid {holder}); "
                            "stop it first, or open the archive read-only") from None
    return handle


def check_unlocked(path) -> None:
    """ArchiveLocked when another process holds the archive's lock now (a real flock test, not the pid file)."""
    handle = _locked_handle(Path(path))
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def lock_holder(path) -> int | None:
    """The pid written in ARCHIVE/.lock when that process is alive (a driver is running), else None."""
    try:
        pid = int((Path(path) / LOCK_FILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _open_repo(path: Path) -> git.Repo:
    if not path.is_dir():
        raise NotAnArchive(f"{path}: no such archive folder")
    if not (path / ".git").is_dir():
        raise NotAnArchive(f"{path}: not a popsearch archive (no .git folder there); `popsearch run` creates one")
    repo = git.Repo(path)
    with repo.config_reader() as config:
        mark = config.get_value(*MARKER) if config.has_option(*MARKER) else None
    if str(mark) != FORMAT_VERSION:
        repo.close()
        raise NotAnArchive(f"{path}: a git repository but not a popsearch archive "
                           f"(git config {'.'.join(MARKER)} is {mark!r}, expected {FORMAT_VERSION!r})")
    return repo


def _init_repo(folder: Path) -> None:
    """An empty repository marked as a popsearch archive, with the ledger and reports excluded."""
    repo = git.Repo.init(folder, initial_branch=SEED_BRANCH)
    with repo.config_writer() as config:
        config.set_value(*MARKER, FORMAT_VERSION)
        config.set_value("user", "name", ACTOR.name)
        config.set_value("user", "email", ACTOR.email)
    exclude = Path(repo.git_dir) / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with open(exclude, "a") as fh:
        fh.write("# popsearch: written beside the archive, never committed\n" + "\n".join(EXCLUDES) + "\n")
    ledger.ledger_dir(folder).mkdir()
    repo.close()


def _created_elsewhere(path: Path) -> str:
    return (f"{path} already exists and is not empty: another popsearch driver created it at the same moment "
            f"and runs the population (`popsearch status {path}`)")


def _rename_into_place(building: Path, path: Path) -> None:
    """Move a finished draft to `path` (absent or an empty folder); ArchiveLocked when another one got there."""
    try:
        os.rename(building, path)
    except OSError as exc:
        if path.is_dir() and any(path.iterdir()):
            raise ArchiveLocked(_created_elsewhere(path)) from None
        raise ArchiveError(f"{path}: could not create the archive there: {exc.strerror}") from None


def member_names(size: int) -> list[str]:
    """The members of a new population: m0, m1, ..."""
    return [f"m{i}" for i in range(size)]


def _check_members(members) -> list[str]:
    names = [ledger.valid_id(m, "member") for m in members]
    if not names:
        raise ValueError("a population needs at least one member")
    if len(set(names)) != len(names):
        raise ValueError(f"member names repeat: {', '.join(names)}")
    return names


class Archive:
    """One population's git repository. Writers hold ARCHIVE/.lock; readers (status, report) pass writer=False."""

    source_hash = staticmethod(source_hash)

    def __init__(self, path, writer: bool = True):
        self.path = Path(path).resolve()
        self.writer = writer
        self.segment = 0                 # the score segment stamped on every row recorded (the driver sets it)
        self.repo = _open_repo(self.path)
        try:
            self._lock = _acquire_lock(self.path) if writer else None
        except ArchiveError:
            self.repo.close()
            raise

    @classmethod
    def open(cls, path, writer: bool = True) -> "Archive":
        return cls(path, writer)

    @classmethod
    def create(cls, path, seed_source: str, members: list[str], message: str = "seed train.py",
               ancestors=()) -> "Archive":
        """A new archive at `path` (absent or empty): the seed commit (after `ancestors`, a chain of (source,
        message) commits of an adopted project's history, oldest first), one branch per member.

        Built in a hidden sibling folder and renamed into place, so a kill leaves no half-made archive; the
        draft's lock moves with it, so no other driver can open the archive between the rename and the lock.
        Of two drivers creating one archive at once, the second gets ArchiveLocked and leaves nothing behind."""
        path = Path(path).resolve()
        if (path / ".git").exists():
            raise ArchiveLocked(_created_elsewhere(path))
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise NotAnArchive(f"{path} already exists, is not empty and is not a popsearch archive; "
                               f"pick a new folder")
        names = _check_members(members)
        building = path.parent / f".{path.name}.creating-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        draft = None
        try:
            _init_repo(building)
            draft = cls(building)
            draft._seed(seed_source, names, message, ancestors)
            draft.repo.close()
            _rename_into_place(building, path)
            draft.path, draft.repo = path, _open_repo(path)
            return draft
        except BaseException:
            if draft is not None:
                draft.close()
            shutil.rmtree(building, ignore_errors=True)
            raise

    def close(self) -> None:
        if self._lock is not None:
            self._lock.seek(0)
            self._lock.truncate()
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        self.repo.close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- low-level git -------------------------------------------------------------------------------

    def _writable(self) -> None:
        if self._lock is None:
            raise ArchiveError(f"{self.path} is open read-only (or closed); writes need Archive(path, writer=True)")

    def _git(self, *args) -> str:
        try:
            return self.repo.git.execute(["git", *args])
        except git.GitCommandError as exc:
            raise ArchiveError(f"{self.path}: git {' '.join(args)} failed: {exc.stderr.strip()}") from exc

    def _git_stdin(self, args: list[str], text: str) -> str:
        done = subprocess.run(["git", *args], cwd=self.path, input=text.encode(), capture_output=True)
        if done.returncode:
            raise ArchiveError(f"{self.path}: git {' '.join(args)} failed: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def _store(self, kind: str, data: bytes) -> str:
        return self.repo.odb.store(IStream(kind, len(data), BytesIO(data))).binsha.hex()

    def _commit_of(self, rev: str) -> git.Commit:
        try:
            return self.repo.commit(rev)
        except (git.BadName, git.BadObject, ValueError) as exc:
            raise ArchiveError(f"{rev}: no such commit in {self.path}") from exc

    def _tree(self, base: str | None, source: str) -> str:
        """The tree of commit `base` (or an empty one) with train.py set to `source`."""
        data = source.encode("utf-8")
        if len(data) > MAX_SOURCE_BYTES:
            raise ArchiveError(f"{SOURCE_FILE} is {len(data)} bytes, over the limit of {MAX_SOURCE_BYTES}")
        blob = bytes.fromhex(self._store("blob", data))
        entries = [] if base is None else tree_entries_from_data(self._commit_of(base).tree.data_stream.read())
        entries = [e for e in entries if e[2] != SOURCE_FILE] + [(blob, FILE_MODE, SOURCE_FILE)]
        buffer = BytesIO()
        tree_to_stream(sorted(entries, key=_tree_order), buffer.write)
        return self._store("tree", buffer.getvalue())

    def _commit(self, tree: str, parents: list[str], message: str) -> str:
        commit = git.Commit.create_from_tree(self.repo, tree, message, parent_commits=[
            self._commit_of(p) for p in parents], head=False, author=ACTOR, committer=ACTOR)
        return commit.hexsha

    def _update_ref(self, ref: str, new: str, old: str | None = None) -> None:
        """Atomic (git takes a lock file and renames it); with `old`, only if the ref is still there."""
        self._git("update-ref", "-m", "popsearch", ref, new, *([old] if old else []))

    def _delete_ref(self, ref: str, old: str | None = None) -> None:
        self._git("update-ref", "-d", ref, *([old] if old else []))

    def _refs(self, prefix: str) -> dict[str, str]:
        """{name below prefix: sha} for the refs under prefix."""
        out = self._git("for-each-ref", "--format=%(objectname) %(refname)", prefix.rstrip("/"))
        pairs = (line.split(" ", 1) for line in out.splitlines() if line)
        return {ref[len(prefix):]: sha for sha, ref in pairs if ref.startswith(prefix)}

    def _ref_sha(self, ref: str) -> str | None:
        out = self._git("for-each-ref", "--format=%(objectname) %(refname)", ref)
        return next((line.split(" ")[0] for line in out.splitlines() if line.endswith(" " + ref)), None)

    def _messages(self, prefix: str) -> list[tuple[str, str, str]]:
        """(refname, sha, message) of every commit ref under prefix, in one git call."""
        out = self._git("for-each-ref", "--format=%(refname)%00%(objectname)%00%(contents)%1e", prefix.rstrip("/"))
        chunks = (chunk.strip("\n") for chunk in out.split("\x1e"))
        return [tuple(chunk.split("\0", 2)) for chunk in chunks if chunk]

    def _is_ancestor(self, ancestor: str, rev: str) -> bool:
        try:
            self.repo.git.merge_base("--is-ancestor", ancestor, rev)
        except git.GitCommandError:
            return False
        return True

    # ---- population ----------------------------------------------------------------------------------

    def _seed(self, source: str, members: list[str], message: str, ancestors=()) -> None:
        parents: list[str] = []
        for old_source, old_message in ancestors:
            parents = [self._commit(self._tree(None, old_source), parents, old_message)]
        root = self._commit(self._tree(None, source), parents, message)
        self._update_ref(SEED_REF, root, ZERO_SHA)
        self._git("reset", "-q", "--hard")
        for member in members:
            self._log_event("create", member, root)
            self._update_ref(BRANCHES + member, root, ZERO_SHA)

    def add_imported(self, name: str, parent: str, source: str | None, message: str) -> str:
        """refs/imported/<name>: a run of an adopted project that was not kept (its train.py when known)."""
        self._writable()
        tree = self._tree(None, source) if source is not None else self._store("tree", b"")
        sha = self._commit(tree, [parent], message)
        self._update_ref(IMPORTED + name, sha, ZERO_SHA)
        return sha

    def imported(self) -> list[dict]:
        """The adopted project's history: trailers of the imported commits on the seed's chain (kind ancestor)
        and of refs/imported/* (kind trial), each with its archive commit, oldest first."""
        out = []
        for sha in reversed(self._git("rev-list", "--first-parent", SEED_REF).split()):
            trailers = parse_message(self._commit_of(sha).message)[1]
            if IMPORTED_TRAILER in trailers:
                out.append({**trailers, "kind": "ancestor", "commit": sha})
        for ref, sha, text in self._messages(IMPORTED):
            out.append({**parse_message(text)[1], "kind": "trial", "commit": sha})
        return out

    def heads(self) -> dict[str, str]:
        """{member: head sha} of the living members."""
        return self._refs(BRANCHES)

    def members(self) -> list[str]:
        return sorted(self.heads())

    def retired(self) -> dict[str, str]:
        """{member: last head sha} of the retired members."""
        return self._refs(RETIRED)

    def tip(self, member: str) -> str:
        """The head of a living member, or the last head of a retired one."""
        sha = self.heads().get(member) or self.retired().get(member)
        if sha is None:
            raise ArchiveError(f"no member {member!r} in {self.path}")
        return sha

    def source(self, rev: str) -> str:
        """train.py at a commit (sha, ref or branch name)."""
        commit = self._commit_of(rev)
        try:
            blob = commit.tree / SOURCE_FILE
        except KeyError:
            raise ArchiveError(f"commit {commit.hexsha[:SHORT]} in {self.path} has no {SOURCE_FILE}") from None
        return blob.data_stream.read().decode("utf-8")

    def _check_new_member(self, name: str) -> None:
        ledger.valid_id(name, "member")
        used = set(self.heads()) | set(self.retired()) | {e.get("Member") for e in self._events()}
        if name in used:
            raise ArchiveError(f"member name {name!r} is already used in {self.path}")

    def _log_event(self, event: str, member: str, at: str, forked_from: str | None = None) -> None:
        """Append one event commit (empty tree, trailers) to refs/popsearch/lineage."""
        parent = self._ref_sha(LINEAGE_REF)
        pairs = [("Event", event), ("Member", member), ("Forked-From", forked_from), ("At", at),
                 ("Time", repr(time.time()))]
        sha = self._commit(self._store("tree", b""), [parent] if parent else [],
                           compose_message(f"{event} {member}", pairs))
        self._update_ref(LINEAGE_REF, sha, parent or ZERO_SHA)

    def _events(self) -> list[dict]:
        if self._ref_sha(LINEAGE_REF) is None:
            return []
        out = self._git("log", "--reverse", "--format=%B%x1e", LINEAGE_REF)
        return [parse_message(chunk)[1] for chunk in out.split("\x1e") if chunk.strip()]

    def fork(self, new_member: str, from_member: str) -> str:
        """A new member whose branch starts at from_member's head. Journal first, then the branch."""
        self._writable()
        self._check_new_member(new_member)
        at = self.heads().get(from_member)
        if at is None:
            raise ArchiveError(f"cannot fork from {from_member!r}: not a living member of {self.path}")
        self._log_event("fork", new_member, at, from_member)
        self._update_ref(BRANCHES + new_member, at, ZERO_SHA)
        return at

    def retire(self, member: str) -> str:
        """Move pop/<member> to refs/retired/<member>. Journal first, then the refs."""
        self._writable()
        at = self.heads().get(member)
        if at is None:
            raise ArchiveError(f"cannot retire {member!r}: not a living member of {self.path}")
        self._log_event("retire", member, at)
        self._finish_retire(member, at)
        return at

    def _finish_retire(self, member: str, at: str) -> None:
        self._update_ref(RETIRED + member, at)
        self._delete_ref(BRANCHES + member, at)

    def lineage(self) -> list[LineageEntry]:
        """(member, forked_from, created_at, retired_at) of every member ever, in order of creation."""
        entries: dict[str, list] = {}
        for event in self._events():
            member, stamp = event.get("Member", ""), float(event.get("Time", "nan"))
            if event.get("Event") in ("create", "fork"):
                entries[member] = [member, event.get("Forked-From"), stamp, None]
            elif event.get("Event") == "retire" and member in entries:
                entries[member][3] = stamp
        return [LineageEntry(*entry) for entry in entries.values()]

    # ---- candidates ----------------------------------------------------------------------------------

    def _check_unused(self, trial_id: str) -> None:
        ledger.valid_id(trial_id)
        out = self._git("for-each-ref", "--format=%(refname)", PENDING + trial_id, TRIALS + trial_id)
        if out.strip():
            raise ArchiveError(f"trial id {trial_id} is already used in {self.path} ({out.split()[0]})")

    def new_trial_id(self, prefix: str = "t") -> str:
        """The next free id `<prefix><number>` after every pending and judged trial."""
        names = list(self._refs(PENDING)) + list(self._refs(TRIALS))
        numbers = [int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()]
        return f"{prefix}{max(numbers, default=0) + 1:0{TRIAL_ID_DIGITS}d}"

    def add_pending(self, member: str, parent_sha: str, source: str, message: str, trial_id: str,
                    proposer: str) -> str:
        """Commit a candidate train.py on top of parent_sha (a commit of member's branch) as refs/pending/<id>."""
        self._writable()
        self._check_unused(trial_id)
        head = self.heads().get(member)
        if head is None:
            raise ArchiveError(f"member {member!r} is not alive in {self.path} (alive: {', '.join(self.members())})")
        parent = self._commit_of(parent_sha).hexsha
        if not self._is_ancestor(parent, head):
            raise ArchiveError(f"trial {trial_id}: parent {parent[:SHORT]} is not on pop/{member}")
        text = compose_message(message, pending_trailers(trial_id, member, parent, proposer))
        sha = self._commit(self._tree(parent, source), [parent], text)
        self._update_ref(PENDING + trial_id, sha, ZERO_SHA)
        return sha

    def pending(self) -> list[Pending]:
        """Candidates proposed and not yet judged, by trial id (a restarted driver dispatches them again)."""
        judged = set(self._refs(TRIALS))
        found = []
        for ref, sha, text in self._messages(PENDING):
            trial_id = ref[len(PENDING):]
            if trial_id in judged:
                continue
            message, trailers = parse_message(text)
            found.append(Pending(trial_id, sha, trailers.get("Member", ""), trailers.get("Parent", ""),
                                 trailers.get("Proposer", ""), message))
        return sorted(found)

    def _pending_of(self, trial_id: str) -> Pending:
        if self._ref_sha(TRIALS + trial_id):
            raise ArchiveError(f"trial {trial_id} is already recorded ({TRIALS}{trial_id}) in {self.path}")
        for pend in self.pending():
            if pend.trial_id == trial_id:
                return pend
        raise ArchiveError(f"no pending candidate {PENDING}{trial_id} in {self.path}")

    def check_candidate(self, rev: str) -> str:
        """'' when the commit is a valid candidate (one parent, only train.py changed, a text file); else why not."""
        commit = self._commit_of(rev)
        if len(commit.parents) != 1:
            return (f"commit {commit.hexsha[:SHORT]} has {len(commit.parents)} parents; a candidate is one "
                    f"{SOURCE_FILE} edit on a member head")
        changed = self._git("diff-tree", "-r", "-z", "--name-only", "--no-renames",
                            commit.parents[0].hexsha, commit.hexsha).split("\0")
        others = sorted({name for name in changed if name and name != SOURCE_FILE})
        if others:
            return f"changes files other than {SOURCE_FILE}: {', '.join(others)}"
        return self._source_problem(commit)

    def _source_problem(self, commit: git.Commit) -> str:
        try:
            blob = commit.tree / SOURCE_FILE
        except KeyError:
            return f"commit {commit.hexsha[:SHORT]} has no {SOURCE_FILE}"
        if blob.type != "blob" or blob.mode not in BLOB_MODES:
            return f"{SOURCE_FILE} is not a regular file (mode {blob.mode:o})"
        if blob.size > MAX_SOURCE_BYTES:
            return f"{SOURCE_FILE} is {blob.size} bytes, over the limit of {MAX_SOURCE_BYTES}"
        try:
            blob.data_stream.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"{SOURCE_FILE} is not UTF-8 text ({exc})"
        return ""

    # ---- judging -------------------------------------------------------------------------------------

    def record(self, trial_id: str, row: dict, promote: bool, expect_head: str | None = None) -> str:
        """Record a judged candidate; returns the judged commit's sha. See _record for the order of writes."""
        return self._record(trial_id, row, promote, expect_head)[0]

    def finish(self, trial_id: str, row: dict, promote: bool = False, expect_head: str | None = None) -> dict:
        """record() and then the ledger row (with its commit); returns that row."""
        sha, full = self._record(trial_id, row, promote, expect_head)
        ledger.append(self.path, full)
        return full

    def reject(self, member: str, parent_sha: str, trial_id: str, proposer: str, message: str, reason: str,
               source: str | None = None, row: dict | None = None) -> dict:
        """Record a proposal that never reaches a device (status invalid, verdict rejected) with its reason."""
        parent = self._commit_of(parent_sha).hexsha
        text = self.source(parent) if source is None else source
        self.add_pending(member, parent, text, message, trial_id, proposer)
        base = {"status": "invalid", "verdict": "rejected", "reason": reason, "finished_at": time.time()}
        return self.finish(trial_id, {**base, **(row or {})}, promote=False)

    def _record(self, trial_id: str, row: dict, promote: bool, expect_head: str | None) -> tuple[str, dict]:
        """Each step is one atomic git write; a kill between any two is put right by repair():

        1. judged commit object (same tree and parent as the pending one): unreferenced, the trial stays pending;
        2. refs/trials/<id> = that commit: the commit point, the trial is finished from here on;
        3. pop/<member> moves (promote): a lost move is re-applied by repair from the Head-Before trailer;
        4. refs/pending/<id> deleted: a pending ref of a judged trial is ignored and dropped by repair;
        the ledger row comes after (finish); repair writes rows missing from the ledger from Record trailers."""
        self._writable()
        pend = self._pending_of(trial_id)
        full = {**completed_row(pend, row, promote), "segment": self.segment}
        head_before = self._promotion_base(pend, expect_head) if promote else None
        sha = self._judged_commit(pend, full, head_before)
        self._mark_judged(trial_id, sha)
        if promote:
            self._move_branch(pend.member, sha, head_before)
        self._drop_pending(trial_id)
        full["commit"] = sha
        return sha, full

    def _promotion_base(self, pend: Pending, expect_head: str | None) -> str:
        """The member head a promotion replaces: the candidate's parent unless the caller judged it on a newer head."""
        problem = self.check_candidate(pend.sha)
        if problem:
            raise ArchiveError(f"trial {pend.trial_id} cannot be promoted: {problem}")
        head = self.heads().get(pend.member)
        if head is None:
            raise ArchiveError(f"trial {pend.trial_id} cannot be promoted: {pend.member!r} is not a living member")
        expected = expect_head or pend.parent
        if head != expected:
            raise HeadMoved(f"trial {pend.trial_id}: pop/{pend.member} is at {head[:SHORT]}, not "
                            f"{expected[:SHORT]}; judge it against the new head and pass expect_head, "
                            "or record it without promotion")
        return head

    def _judged_commit(self, pend: Pending, row: dict, head_before: str | None) -> str:
        tree = self._commit_of(pend.sha).tree.hexsha
        message = compose_message(row["message"] or pend.message, judged_trailers(row, head_before))
        return self._commit(tree, [pend.parent] if pend.parent else [], message)

    def _mark_judged(self, trial_id: str, sha: str) -> None:
        self._update_ref(TRIALS + trial_id, sha, ZERO_SHA)

    def _move_branch(self, member: str, sha: str, old: str) -> None:
        self._update_ref(BRANCHES + member, sha, old)

    def _drop_pending(self, trial_id: str) -> None:
        self._delete_ref(PENDING + trial_id)

    # ---- records -------------------------------------------------------------------------------------

    def _trial_entries(self) -> tuple[list[tuple[dict, dict]], list[str]]:
        """([(ledger row, trailers)] of every refs/trials/* sorted by finish, [refs whose record is unreadable])."""
        entries, problems = [], []
        for ref, sha, text in self._messages(TRIALS):
            trailers = parse_message(text)[1]
            try:
                record = json.loads(trailers["Record"])
                row = ledger.normalize({k: v for k, v in record.items() if k in ledger.COLUMNS})
            except (KeyError, ValueError) as exc:
                problems.append(f"{ref}: no readable Record trailer ({exc})")
                continue
            row["commit"] = sha
            entries.append((row, trailers))
        entries.sort(key=lambda e: (e[0]["finished_at"] is None, e[0]["finished_at"] or 0.0, e[0]["trial_id"]))
        return entries, problems

    def trial_records(self) -> list[dict]:
        """Every judged trial's ledger row, from the commit trailers (the source of truth), by finish time."""
        return [row for row, _ in self._trial_entries()[0]]

    def _first_parent_chain(self, member: str) -> list[str]:
        return self._git("rev-list", "--first-parent", self.tip(member)).split()

    def history(self, member: str) -> list[dict]:
        """The member's own trials (kept or not) and the kept trials it inherited through forks, by finish time."""
        chain = set(self._first_parent_chain(member))
        return [r for r in self.trial_records() if r["member"] == member or r["commit"] in chain]

    def standing(self, member: str, records: list[dict] | None = None) -> dict | None:
        """The trial record of the member's head (newest recorded commit on its branch); None for a bare seed."""
        by_commit = {r["commit"]: r for r in (self.trial_records() if records is None else records)}
        return next((by_commit[sha] for sha in self._first_parent_chain(member) if sha in by_commit), None)

    def trials_by_source(self, records: list[dict] | None = None) -> dict[str, list[str]]:
        """{source_hash: [trial ids, by finish time]} to spot byte-identical candidates (of `records`, else of
        every trial record)."""
        records = self.trial_records() if records is None else records
        if not records:
            return {}
        lines = "".join(f"{r['commit']}:{SOURCE_FILE}\n" for r in records)
        out = self._git_stdin(["cat-file", "--batch-check=%(objectname)"], lines)
        found: dict[str, list[str]] = {}
        for record, line in zip(records, out.splitlines()):
            if not line.endswith(" missing"):
                found.setdefault(line.strip(), []).append(record["trial_id"])
        return found

    # ---- inbox ---------------------------------------------------------------------------------------

    def inbox_refs(self) -> list[tuple[str, str]]:
        """(refname, sha) of candidate commits pushed to refs/inbox/*."""
        return sorted((INBOX + name, sha) for name, sha in self._refs(INBOX).items())

    def consume_inbox(self, ref: str, trial_id: str, proposer: str = "inbox") -> tuple[Pending, str]:
        """Turn an inbox commit into refs/pending/<id> and drop the inbox ref, in one ref transaction.

        Returns (pending, reason): reason '' means a valid candidate; otherwise record it with status invalid."""
        self._writable()
        self._check_unused(trial_id)
        refname = ref if ref.startswith(INBOX) else INBOX + ref
        sha = self._ref_sha(refname)
        if sha is None:
            raise ArchiveError(f"no inbox ref {refname} in {self.path}")
        commit = self._commit_of(sha)
        parent = commit.parents[0].hexsha if len(commit.parents) == 1 else ""
        member, why = self._inbox_member(refname, parent) if parent else ("", "")
        reason = self.check_candidate(sha) or why
        message = commit.message.strip() or f"candidate from {refname}"
        trailers = pending_trailers(trial_id, member, parent, proposer) + [("Inbox-Ref", refname),
                                                                           ("Inbox-Commit", sha)]
        pend_sha = self._commit(commit.tree.hexsha, [parent] if parent else [], compose_message(message, trailers))
        self._git_stdin(["update-ref", "--stdin"], f"create {PENDING}{trial_id} {pend_sha}\ndelete {refname} {sha}\n")
        return Pending(trial_id, pend_sha, member, parent, proposer, message), reason

    def _inbox_member(self, refname: str, parent: str) -> tuple[str, str]:
        """The member an inbox commit belongs to: named by refs/inbox/<member>/<name>, else the branch of its parent."""
        heads = self.heads()
        name = refname[len(INBOX):]
        named = name.split("/", 1)[0] if "/" in name else None
        if named in heads:
            if self._is_ancestor(parent, heads[named]):
                return named, ""
            return named, f"parent {parent[:SHORT]} is not on pop/{named}"
        owners = sorted(m for m, head in heads.items() if head == parent)
        if not owners:
            out = self._git("for-each-ref", "--format=%(refname)", "--contains", parent, BRANCHES.rstrip("/"))
            owners = sorted(line[len(BRANCHES):] for line in out.splitlines() if line)
        if owners:
            return owners[0], ""
        return "", (f"parent {parent[:SHORT]} is on no member branch; base inbox commits on a member head "
                    "(refs/inbox/<member>/<name> names the member)")

    # ---- repair --------------------------------------------------------------------------------------

    def repair(self) -> dict:
        """Finish every write a kill interrupted, then make the ledger match the trailers. Idempotent."""
        from orchestrator.repair import repair_archive     # repair.py builds on this module
        return repair_archive(self)


def is_archive(path) -> bool:
    """A folder that a run reopens instead of creating (a git repository is there)."""
    path = Path(path)
    return (path / ".git").exists() or (path / "HEAD").exists()


def check_archive(archive_dir) -> Path:
    """The archive's resolved path; NotAnArchive when the folder is missing or not a popsearch archive."""
    path = Path(archive_dir).expanduser().resolve()
    _open_repo(path).close()
    return path


def repair(archive_dir) -> dict:
    """`popsearch repair ARCHIVE`: finish interrupted writes and rebuild the ledger from the commit trailers."""
    with Archive(archive_dir) as archive:
        return archive.repair()
