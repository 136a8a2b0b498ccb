"""The population's git archive: a branch pop/<member> per member, one commit per candidate, its record in trailers.

Refs pending/<id>, trials/<id>, retired/<m>, inbox/*, popsearch/lineage; the write protocol, its repair, packing."""
from __future__ import annotations

import json
import os
import shutil
import time
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import git
from git.objects.fun import tree_entries_from_data, tree_to_stream

from judge import file_lock
from orchestrator import gitcmd, ledger
from orchestrator.fingerprint import source_hash
from orchestrator.trailers import (Pending, compose_message, completed_row, judged_trailers, parse_message,
                                   pending_trailers)

__all__ = ["Archive", "ArchiveError", "ArchiveLocked", "HeadMoved", "NotAnArchive", "Pending", "LineageEntry",
           "parse_message", "source_hash", "repair", "is_archive", "check_archive", "check_unlocked", "lock_holder",
           "member_names"]

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
FORMAT_VERSION = "2"                       # 2: ledger segments with source hashes; 1 is migrated when opened to write
READABLE_VERSIONS = ("1", FORMAT_VERSION)
EXCLUDES = ("/ledger/", "/ledger.*/", "/report/", "/.lock", "/.ledger*")
ACTOR = git.Actor("popsearch", "popsearch@localhost")
ZERO_SHA = "0" * 40
FILE_MODE = 0o100644
BLOB_MODES = (0o100644, 0o100755)
MAX_SOURCE_BYTES = 1_000_000
SHORT = 10
TRIAL_ID_DIGITS = 5
MAINTAIN_EVERY = 1000                      # judged trials between packings of refs and loose objects
PACK_FACTOR = 2                            # packs are rolled up so that each is >= this times all smaller ones
STALE_GIT_LOCK_SECONDS = 10.0              # a git *.lock older than this is left over from a killed write
IDX_HEADER_BYTES, IDX_BYTES_PER_OBJECT = 1072, 28     # pack index v2: header, fan-out and trailer; per object


class ArchiveError(Exception):
    """Something about the archive is wrong; the message names the archive, ref or trial."""


class ArchiveLocked(ArchiveError):
    """Another driver holds the archive's lock (or created the archive at the same moment)."""


class NotAnArchive(ArchiveError):
    """The folder is missing, or is not a popsearch archive."""


class HeadMoved(ArchiveError):
    """A promotion was asked for but the member's branch is no longer where the caller expected."""


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
    try:
        handle = file_lock.acquire(path / LOCK_FILE, wait=False)
    except file_lock.LockBusy as busy:
        raise ArchiveLocked(f"{path} is in use by another popsearch driver (pid {busy.holder or 'unknown'}); "
                            "stop it first, or open the archive read-only") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def check_unlocked(path) -> None:
    """ArchiveLocked when another process holds the archive's lock now (a real flock test, not the pid file)."""
    try:
        file_lock.release(file_lock.acquire(Path(path) / LOCK_FILE, wait=False))
    except file_lock.LockBusy as busy:
        raise ArchiveLocked(f"{path} is in use by another popsearch driver (pid {busy.holder or 'unknown'}); "
                            "stop it first, or open the archive read-only") from None


def lock_holder(path) -> int | None:
    """The pid written in ARCHIVE/.lock when that process is alive (a driver is running), else None."""
    try:
        pid = int((Path(path) / LOCK_FILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _format_of(repo: git.Repo):
    with repo.config_reader() as config:
        return str(config.get_value(*MARKER)) if config.has_option(*MARKER) else None


def _open_repo(path: Path) -> git.Repo:
    if not path.is_dir():
        raise NotAnArchive(f"{path}: no such archive folder")
    if not (path / ".git").is_dir():
        raise NotAnArchive(f"{path}: not a popsearch archive (no .git folder there); `popsearch run` creates one")
    repo = git.Repo(path)
    mark = _format_of(repo)
    if mark not in READABLE_VERSIONS:
        repo.close()
        raise NotAnArchive(f"{path}: a git repository but not a popsearch archive "
                           f"(git config {'.'.join(MARKER)} is {mark!r}, expected {FORMAT_VERSION!r})")
    return repo


def _init_repo(folder: Path) -> None:
    """An empty repository marked as a popsearch archive, with the ledger and reports excluded; git's own
    automatic gc is off (the archive packs itself, and never packs a pending commit)."""
    repo = git.Repo.init(folder, initial_branch=SEED_BRANCH)
    with repo.config_writer() as config:
        config.set_value(*MARKER, FORMAT_VERSION)
        config.set_value("user", "name", ACTOR.name)
        config.set_value("user", "email", ACTOR.email)
        config.set_value("gc", "auto", "0")
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


def _record_order(row: dict):
    return row["finished_at"] is None, row["finished_at"] or 0.0, row["trial_id"]


def rolled_up(counts: list[tuple[int, str]], factor: int = PACK_FACTOR) -> list[str]:
    """The packs to merge into one so the rest stay a geometric progression: [(objects, name)] -> names.

    From the largest down, the first pack smaller than `factor` times all smaller packs together is merged with
    every smaller one; nothing when that leaves fewer than two."""
    ordered = sorted(counts, reverse=True)
    for i, (count, _) in enumerate(ordered):
        if count < factor * sum(c for c, _ in ordered[i + 1:]):
            names = [name for _, name in ordered[i:]]
            return names if len(names) > 1 else []
    return []


class Archive:
    """One population's git repository. Writers hold ARCHIVE/.lock; readers (status, report) pass writer=False.

    The refs are read once, when the archive is opened; a writer (the only one) then keeps them in memory and
    writes each step with one ref transaction, so recording a trial never lists refs or folders."""

    source_hash = staticmethod(source_hash)

    def __init__(self, path, writer: bool = True):
        self.path = Path(path).resolve()
        self.writer = writer
        self.segment = 0                 # the score segment stamped on every row recorded (the driver sets it)
        self._lock = self._tx = self._ledger = None
        self.repo = _open_repo(self.path)
        try:
            if writer:
                self._lock = _acquire_lock(self.path)
                self._tx = gitcmd.RefTransactions(self.path)
            self._load_refs()
            self._load_records()
            if writer:
                self._migrate()
                self._adopt_loose_objects()
        except BaseException:
            self.close()
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
            draft._maintain()
            draft._tx.close()
            draft.repo.close()
            _rename_into_place(building, path)
            draft.path, draft.repo, draft._tx = path, _open_repo(path), gitcmd.RefTransactions(path)
            draft._ledger.rehome(path)
            return draft
        except BaseException:
            if draft is not None:
                draft.close()
            shutil.rmtree(building, ignore_errors=True)
            raise

    def close(self) -> None:
        """A writer drops the pending refs of judged trials and packs what it wrote, then lets the lock go."""
        if self._lock is not None:
            try:
                if hasattr(self, "_records"):       # fully opened
                    self._maintain()
            finally:
                self._tx.close()
                self._lock.seek(0)
                self._lock.truncate()
                file_lock.release(self._lock)
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

    def _git(self, *args, stdin: str | None = None) -> str:
        try:
            return gitcmd.git(self.path, *args, stdin=stdin)
        except gitcmd.GitFailed as exc:
            raise ArchiveError(str(exc)) from None

    def _refs_apply(self, lines: list[str]) -> None:
        """One atomic ref transaction (create/update/delete lines) in the writer's long-lived update-ref."""
        try:
            self._tx.apply(lines)
        except gitcmd.GitFailed as exc:
            raise ArchiveError(str(exc)) from None

    def _store(self, kind: str, data: bytes, keep: str | None = "") -> str:
        """Write one object (loose); keep=None for an object that is dropped later (a pending commit), else the
        path name it is packed under."""
        sha = gitcmd.write_object(self.repo.git_dir, kind, data)
        if keep is not None and self._lock is not None:
            self._keep.append((sha, keep))
        return sha

    def _commit_of(self, rev: str) -> git.Commit:
        try:
            return self.repo.commit(rev)
        except (git.BadName, git.BadObject, ValueError) as exc:
            raise ArchiveError(f"{rev}: no such commit in {self.path}") from exc

    def _resolve(self, rev: str) -> str:
        return self._commit_of(rev).hexsha

    def _tree(self, base: str | None, source: str) -> str:
        """The tree of commit `base` (or an empty one) with train.py set to `source`."""
        data = source.encode("utf-8")
        if len(data) > MAX_SOURCE_BYTES:
            raise ArchiveError(f"{SOURCE_FILE} is {len(data)} bytes, over the limit of {MAX_SOURCE_BYTES}")
        blob = bytes.fromhex(self._store("blob", data, SOURCE_FILE))
        entries = [] if base is None else tree_entries_from_data(self._commit_of(base).tree.data_stream.read())
        entries = [e for e in entries if e[2] != SOURCE_FILE] + [(blob, FILE_MODE, SOURCE_FILE)]
        buffer = BytesIO()
        tree_to_stream(sorted(entries, key=_tree_order), buffer.write)
        return self._store("tree", buffer.getvalue())

    def _commit(self, tree: str, parents: list[str], message: str, keep: bool = True) -> str:
        """A commit object by popsearch (parents are full shas); keep=False for a pending commit."""
        who = f"{ACTOR.name} <{ACTOR.email}> {int(time.time())} +0000"
        head = [f"tree {tree}", *(f"parent {p}" for p in parents), f"author {who}", f"committer {who}"]
        return self._store("commit", ("\n".join(head) + "\n\n" + message).encode("utf-8"), "" if keep else None)

    def _ref_sha(self, ref: str) -> str | None:
        out = self._git("for-each-ref", "--format=%(objectname) %(refname)", ref)
        return next((line.split(" ")[0] for line in out.splitlines() if line.endswith(" " + ref)), None)

    def _messages(self, prefix: str) -> list[tuple[str, str, str]]:
        """(refname, sha, message) of every commit ref under prefix, in one git call."""
        out = self._git("for-each-ref", "--format=%(refname)%00%(objectname)%00%(contents)%1e", prefix.rstrip("/"))
        chunks = (chunk.strip("\n") for chunk in out.split("\x1e"))
        return [tuple(chunk.split("\0", 2)) for chunk in chunks if chunk]

    def _commit_messages(self, shas: list[str]) -> dict[str, str]:
        """{sha: message} of commits, in one `git cat-file --batch` call."""
        if not shas:
            return {}
        data = gitcmd.git(self.path, "cat-file", "--batch", stdin="".join(s + "\n" for s in shas), binary=True)
        found, at = {}, 0
        for sha in shas:
            end = data.index(b"\n", at)
            header = data[at:end].decode().split(" ")
            if len(header) != 3:                    # "<sha> missing"
                at = end + 1
                continue
            _, kind, size = header
            body = data[end + 1: end + 1 + int(size)]
            at = end + 1 + int(size) + 1
            text = body.decode("utf-8", "replace")
            found[sha] = text.split("\n\n", 1)[1] if kind == "commit" and "\n\n" in text else ""
        return found

    def _is_ancestor(self, ancestor: str, rev: str) -> bool:
        return ancestor == rev or gitcmd.git(self.path, "merge-base", "--is-ancestor", ancestor, rev,
                                             check=False) is not None

    def _train_py_hash(self, rev: str | None) -> str | None:
        """source_hash of train.py at a commit (its blob id), cached; None without one."""
        if not rev:
            return None
        if rev not in self._blob_of:
            try:
                self._blob_of[rev] = (self._commit_of(rev).tree / SOURCE_FILE).hexsha
            except (KeyError, ArchiveError):
                self._blob_of[rev] = None
        return self._blob_of[rev]

    # ---- the refs, read once -------------------------------------------------------------------------

    def _load_refs(self) -> None:
        """Members, retired members, judged and pending trials, lineage tip: two git calls, at open only."""
        out = self._git("for-each-ref", "--format=%(objectname) %(refname)", BRANCHES.rstrip("/"),
                        RETIRED.rstrip("/"), TRIALS.rstrip("/"), LINEAGE_REF)
        self._heads, self._retired, self._judged, self._lineage_tip = {}, {}, {}, None
        groups = ((BRANCHES, self._heads), (RETIRED, self._retired), (TRIALS, self._judged))
        for sha, ref in (line.split(" ", 1) for line in out.splitlines() if line):
            if ref == LINEAGE_REF:
                self._lineage_tip = sha
            for prefix, into in groups:
                if ref.startswith(prefix):
                    into[ref[len(prefix):]] = sha
        self._pending, self._stale_pending = {}, {}
        for ref, sha, text in self._messages(PENDING):
            trial_id = ref[len(PENDING):]
            if trial_id in self._judged:           # judged: its pending ref is dropped at the next packing
                self._stale_pending[trial_id] = sha
                continue
            message, trailers = parse_message(text)
            self._pending[trial_id] = Pending(trial_id, sha, trailers.get("Member", ""), trailers.get("Parent", ""),
                                              trailers.get("Proposer", ""), message)
        self._keep, self._since_packing, self._blob_of, self._tree_of = [], 0, {}, {}

    def _load_records(self) -> None:
        """The ledger's trial ids (the writer opens the ledger for appending; rows are read on first use, see
        _all_records) and, in memory, the rows of judged trials that a kill kept out of the ledger, from their
        trailers (repair writes those)."""
        self._aside = {"moved": [], "backup": None}
        if self._lock is not None:
            try:
                self._ledger = ledger.Ledger(self.path)
            except ledger.LedgerError:              # repair writes their rows back from the trailers
                self._aside = ledger.set_aside_unreadable(self.path)
                self._ledger = ledger.Ledger(self.path)
            self._read_ids = None
        else:
            self._read_ids = ledger.trial_ids(self.path, skip_unreadable=True)
        entries, self._unreadable = self._entries_from_trailers(sorted(set(self._judged) - self._ledger_ids()))
        self._extra_rows = {row["trial_id"]: row for row, _ in entries}     # judged rows not in the ledger
        self._records, self._records_sorted = None, True                   # every row: read on first use

    def _ledger_ids(self) -> set:
        """Trial ids in the ledger: the writer's ledger keeps them as it appends; a reader's were read at open."""
        return self._ledger.ids if self._read_ids is None else self._read_ids

    def _all_records(self) -> list[dict]:
        """Every judged row: the ledger read once, on first use, plus the rows it lacks (_extra_rows)."""
        if self._records is None:
            rows = ledger.read_table(self.path, skip_unreadable=True).to_pylist()
            known = {r["trial_id"] for r in rows}
            rows += [row for trial_id, row in self._extra_rows.items() if trial_id not in known]
            rows.sort(key=_record_order)
            self._records, self._records_sorted = rows, True
        return self._records

    def _entries_from_trailers(self, trial_ids: list[str]) -> tuple[list[tuple[dict, dict]], list[str]]:
        """([(ledger row, trailers)] of judged trials read from their commits, [trials whose record is unreadable])."""
        shas = [self._judged[t] for t in trial_ids]
        texts = self._commit_messages(shas)
        entries, problems = [], []
        for trial_id, sha in zip(trial_ids, shas):
            trailers = parse_message(texts.get(sha, ""))[1]
            try:
                record = json.loads(trailers["Record"])
                row = ledger.normalize({k: v for k, v in record.items() if k in ledger.COLUMNS})
            except (KeyError, ValueError) as exc:
                problems.append(f"{TRIALS}{trial_id}: no readable Record trailer ({exc})")
                continue
            row["commit"] = sha
            entries.append((row, trailers))
        entries.sort(key=lambda e: _record_order(e[0]))
        return entries, problems

    # ---- population ----------------------------------------------------------------------------------

    def _seed(self, source: str, members: list[str], message: str, ancestors=()) -> None:
        parents: list[str] = []
        for old_source, old_message in ancestors:
            parents = [self._commit(self._tree(None, old_source), parents, old_message)]
        root = self._commit(self._tree(None, source), parents, message)
        self._refs_apply([f"create {SEED_REF} {root}"])
        self._git("reset", "-q", "--hard")
        for member in members:
            self._log_event("create", member, root)
            self._refs_apply([f"create {BRANCHES}{member} {root}"])
            self._heads[member] = root

    def add_imported(self, name: str, parent: str, source: str | None, message: str) -> str:
        """refs/imported/<name>: a run of an adopted project that was not kept (its train.py when known)."""
        self._writable()
        tree = self._tree(None, source) if source is not None else self._store("tree", b"")
        sha = self._commit(tree, [self._resolve(parent)], message)
        self._refs_apply([f"create {IMPORTED}{name} {sha}"])
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
        return dict(self._heads)

    def members(self) -> list[str]:
        return sorted(self._heads)

    def retired(self) -> dict[str, str]:
        """{member: last head sha} of the retired members."""
        return dict(self._retired)

    def tip(self, member: str) -> str:
        """The head of a living member, or the last head of a retired one."""
        sha = self._heads.get(member) or self._retired.get(member)
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
        used = set(self._heads) | set(self._retired) | {e.get("Member") for e in self._events()}
        if name in used:
            raise ArchiveError(f"member name {name!r} is already used in {self.path}")

    def _log_event(self, event: str, member: str, at: str, forked_from: str | None = None) -> None:
        """Append one event commit (empty tree, trailers) to refs/popsearch/lineage."""
        parent = self._lineage_tip
        pairs = [("Event", event), ("Member", member), ("Forked-From", forked_from), ("At", at),
                 ("Time", repr(time.time()))]
        sha = self._commit(self._store("tree", b""), [parent] if parent else [],
                           compose_message(f"{event} {member}", pairs))
        self._refs_apply([f"update {LINEAGE_REF} {sha} {parent or ZERO_SHA}"])
        self._lineage_tip = sha

    def _events(self) -> list[dict]:
        if self._lineage_tip is None:
            return []
        out = self._git("log", "--reverse", "--format=%B%x1e", self._lineage_tip)
        return [parse_message(chunk)[1] for chunk in out.split("\x1e") if chunk.strip()]

    def fork(self, new_member: str, from_member: str) -> str:
        """A new member whose branch starts at from_member's head. Journal first, then the branch."""
        self._writable()
        self._check_new_member(new_member)
        at = self._heads.get(from_member)
        if at is None:
            raise ArchiveError(f"cannot fork from {from_member!r}: not a living member of {self.path}")
        self._log_event("fork", new_member, at, from_member)
        self._create_branch(new_member, at)
        return at

    def _create_branch(self, member: str, at: str) -> None:
        self._refs_apply([f"create {BRANCHES}{member} {at}"])
        self._heads[member] = at

    def retire(self, member: str) -> str:
        """Move pop/<member> to refs/retired/<member>. Journal first, then the refs."""
        self._writable()
        at = self._heads.get(member)
        if at is None:
            raise ArchiveError(f"cannot retire {member!r}: not a living member of {self.path}")
        self._log_event("retire", member, at)
        self._finish_retire(member, at)
        return at

    def _finish_retire(self, member: str, at: str) -> None:
        self._refs_apply([f"update {RETIRED}{member} {at}", f"delete {BRANCHES}{member} {at}"])
        self._retired[member] = self._heads.pop(member)

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
        for refs, prefix in ((self._pending, PENDING), (self._judged, TRIALS), (self._stale_pending, PENDING)):
            if trial_id in refs:
                raise ArchiveError(f"trial id {trial_id} is already used in {self.path} ({prefix}{trial_id})")

    def new_trial_id(self, prefix: str = "t") -> str:
        """The next free id `<prefix><number>` after every pending and judged trial."""
        names = [*self._pending, *self._judged, *self._stale_pending]
        numbers = [int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()]
        return f"{prefix}{max(numbers, default=0) + 1:0{TRIAL_ID_DIGITS}d}"

    def add_pending(self, member: str, parent_sha: str, source: str, message: str, trial_id: str,
                    proposer: str) -> str:
        """Commit a candidate train.py on top of parent_sha (a commit of member's branch) as refs/pending/<id>."""
        self._writable()
        self._check_unused(trial_id)
        head = self._heads.get(member)
        if head is None:
            raise ArchiveError(f"member {member!r} is not alive in {self.path} (alive: {', '.join(self.members())})")
        parent = parent_sha if parent_sha == head else self._resolve(parent_sha)
        if not self._is_ancestor(parent, head):
            raise ArchiveError(f"trial {trial_id}: parent {parent[:SHORT]} is not on pop/{member}")
        text = compose_message(message, pending_trailers(trial_id, member, parent, proposer))
        tree = self._tree(parent, source)
        sha = self._commit(tree, [parent], text, keep=False)
        self._tree_of[sha] = tree
        self._refs_apply([f"create {PENDING}{trial_id} {sha}"])
        self._pending[trial_id] = Pending(trial_id, sha, member, parent, proposer, message.strip() or "(no message)")
        self._blob_of[sha] = source_hash(source)
        return sha

    def pending(self) -> list[Pending]:
        """Candidates proposed and not yet judged, by trial id (a restarted driver dispatches them again)."""
        return sorted(self._pending.values())

    def _pending_of(self, trial_id: str) -> Pending:
        if trial_id in self._judged:
            raise ArchiveError(f"trial {trial_id} is already recorded ({TRIALS}{trial_id}) in {self.path}")
        if trial_id not in self._pending:
            raise ArchiveError(f"no pending candidate {PENDING}{trial_id} in {self.path}")
        return self._pending[trial_id]

    def check_candidate(self, rev: str) -> str:
        """'' when the commit is a valid candidate (one parent, only train.py changed, a text file); else why not."""
        commit = self._commit_of(rev)
        if len(commit.parents) != 1:
            return (f"commit {commit.hexsha[:SHORT]} has {len(commit.parents)} parents; a candidate is one "
                    f"{SOURCE_FILE} edit on a member head")
        changed = self._git("diff-tree", "-r", "-z", "--name-only", "--no-renames",
                            commit.parents[0].hexsha, commit.hexsha).split("\0")
        others = sorted({name for name in changed if name.strip() and name != SOURCE_FILE})
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

    # ---- judging: the write protocol -----------------------------------------------------------------

    def record(self, trial_id: str, row: dict, promote: bool, expect_head: str | None = None) -> str:
        """Record a judged candidate in git only (finish() adds the ledger row; repair writes a missing one);
        returns the judged commit's sha."""
        sha, full = self._record(trial_id, row, promote, expect_head)
        self._extra_rows[trial_id] = full
        self._add_record(full)
        return sha

    def finish(self, trial_id: str, row: dict, promote: bool = False, expect_head: str | None = None) -> dict:
        """record() and then the ledger row (with its commit), durable when this returns; returns that row."""
        sha, full = self._record(trial_id, row, promote, expect_head)
        self._ledger.append(full)
        self._add_record(full)
        self._since_packing += 1
        if self._since_packing >= MAINTAIN_EVERY:
            self._maintain()
        return full

    def reject(self, member: str, parent_sha: str, trial_id: str, proposer: str, message: str, reason: str,
               source: str | None = None, row: dict | None = None) -> dict:
        """Record a proposal that never reaches a device (status invalid, verdict rejected) with its reason."""
        parent = self._resolve(parent_sha)
        text = self.source(parent) if source is None else source
        self.add_pending(member, parent, text, message, trial_id, proposer)
        base = {"status": "invalid", "verdict": "rejected", "reason": reason, "finished_at": time.time()}
        return self.finish(trial_id, {**base, **(row or {})}, promote=False)

    def _record(self, trial_id: str, row: dict, promote: bool, expect_head: str | None) -> tuple[str, dict]:
        """The steps of recording, each an atomic git write; a kill between any two is put right by repair():

        1. the judged commit object (same tree and parent as the pending one): unreferenced, the trial stays pending;
        2. one ref transaction: refs/trials/<id> = that commit (the commit point) and, for a promotion,
           pop/<member> moved (a lost move is re-applied by repair from the Head-Before trailer);
        3. the ledger row (finish): repair writes rows missing from the ledger from their Record trailers;
        4. refs/pending/<id> and its commit are dropped at the next packing (a judged trial's pending ref is ignored)."""
        self._writable()
        pend = self._pending_of(trial_id)
        full = {**completed_row(pend, row, promote), "segment": self.segment}
        full["source_hash"] = self._train_py_hash(pend.sha)
        full["parent_hash"] = self._train_py_hash(pend.parent)
        head_before = self._promotion_base(pend, expect_head) if promote else None
        sha = self._judged_commit(pend, full, head_before)
        lines = [f"create {TRIALS}{trial_id} {sha}"]
        if promote:
            lines.append(f"update {BRANCHES}{pend.member} {sha} {head_before}")
        self._refs_apply(lines)
        self._judged_in_memory(trial_id, sha, pend.member if promote else None)
        full["commit"] = sha
        return sha, full

    def _promotion_base(self, pend: Pending, expect_head: str | None) -> str:
        """The member head a promotion replaces: the candidate's parent unless the caller judged it on a newer head."""
        problem = self.check_candidate(pend.sha)
        if problem:
            raise ArchiveError(f"trial {pend.trial_id} cannot be promoted: {problem}")
        head = self._heads.get(pend.member)
        if head is None:
            raise ArchiveError(f"trial {pend.trial_id} cannot be promoted: {pend.member!r} is not a living member")
        expected = expect_head or pend.parent
        if head != expected:
            raise HeadMoved(f"trial {pend.trial_id}: pop/{pend.member} is at {head[:SHORT]}, not "
                            f"{expected[:SHORT]}; judge it against the new head and pass expect_head, "
                            "or record it without promotion")
        return head

    def _judged_commit(self, pend: Pending, row: dict, head_before: str | None) -> str:
        tree = self._tree_of.pop(pend.sha, None) or self._commit_of(pend.sha).tree.hexsha
        message = compose_message(row["message"] or pend.message, judged_trailers(row, head_before))
        return self._commit(tree, [pend.parent] if pend.parent else [], message)

    def _judged_in_memory(self, trial_id: str, sha: str, promoted_member: str | None) -> None:
        pend = self._pending.pop(trial_id, None)
        self._judged[trial_id] = sha
        if pend is not None:
            self._stale_pending[trial_id] = pend.sha
            self._blob_of[sha] = self._blob_of.get(pend.sha)
        if promoted_member:
            self._heads[promoted_member] = sha

    def _mark_judged(self, trial_id: str, sha: str) -> None:
        """Step 2 without the branch move (a kill inside a transaction; tests replay it)."""
        self._refs_apply([f"create {TRIALS}{trial_id} {sha}"])
        self._judged_in_memory(trial_id, sha, None)

    def _move_branch(self, member: str, sha: str, old: str) -> None:
        self._refs_apply([f"update {BRANCHES}{member} {sha} {old}"])
        self._heads[member] = sha

    def _drop_judged_pending(self) -> list[str]:
        """Delete the pending refs of judged trials in one transaction, then their (loose) pending commits."""
        stale = sorted(self._stale_pending.items())
        if not stale:
            return []
        self._refs_apply([f"delete {PENDING}{trial_id} {sha}" for trial_id, sha in stale])
        objects = Path(self.repo.git_dir) / "objects"
        for _, sha in stale:
            (objects / sha[:2] / sha[2:]).unlink(missing_ok=True)     # a packed one goes with its pack
        self._stale_pending = {}
        return [trial_id for trial_id, _ in stale]

    # ---- packing -------------------------------------------------------------------------------------

    def _maintain(self) -> None:
        """Every MAINTAIN_EVERY trials and on close: drop judged trials' pending refs and commits, pack the refs,
        pack the objects written since (never a pending commit), and roll the packs up geometrically."""
        self._drop_judged_pending()
        self._git("pack-refs", "--all", "--prune")
        self._pack_written()
        self._roll_up_packs()
        self._since_packing = 0

    def _pack_written(self) -> None:
        if not self._keep:
            return
        listing = "".join(f"{sha} {name}\n" if name else f"{sha}\n" for sha, name in dict(self._keep).items())
        self._git("pack-objects", "-q", str(Path(self.repo.git_dir) / "objects" / "pack" / "pack"), stdin=listing)
        self._git("prune-packed", "-q")
        self._keep = []

    def _packs(self) -> list[tuple[int, str]]:
        folder = Path(self.repo.git_dir) / "objects" / "pack"
        return [((p.stat().st_size - IDX_HEADER_BYTES) // IDX_BYTES_PER_OBJECT, p.with_suffix(".pack").name)
                for p in folder.glob("pack-*.idx") if p.with_suffix(".pack").exists()
                and not p.with_suffix(".keep").exists()]

    def _roll_up_packs(self) -> None:
        names = rolled_up(self._packs())
        if not names:
            return
        folder = Path(self.repo.git_dir) / "objects" / "pack"
        self._git("pack-objects", "-q", "--stdin-packs", str(folder / "pack"), stdin="".join(n + "\n" for n in names))
        for name in names:
            for suffix in (".pack", ".idx", ".rev", ".bitmap"):
                (folder / name).with_suffix(suffix).unlink(missing_ok=True)

    def _adopt_loose_objects(self) -> None:
        """Loose objects a killed writer left (all but pending commits) are packed at the next packing."""
        objects = Path(self.repo.git_dir) / "objects"
        pending = {p.sha for p in self._pending.values()} | set(self._stale_pending.values())
        for folder in objects.glob("[0-9a-f][0-9a-f]"):
            for entry in os.scandir(folder):
                sha = folder.name + entry.name
                if len(sha) == 40 and sha not in pending:
                    self._keep.append((sha, ""))

    def _migrate(self) -> None:
        """An archive of format 1 (one parquet file per trial, no source hashes): every row gets source_hash and
        parent_hash (read from git in one call), the rows are folded into segments, and the format is set to 2."""
        if _format_of(self.repo) == FORMAT_VERSION:
            return
        self._git("prune", "--expire=now")          # the pending commits that format 1 left unreachable
        records = self._all_records()
        wanted = sorted({r[key] for r in records for key in ("commit", "parent_commit") if r.get(key)})
        lines = "".join(f"{sha}:{SOURCE_FILE}\n" for sha in wanted)
        out = self._git("cat-file", "--batch-check=%(objectname)", stdin=lines).splitlines() if wanted else []
        blob = {sha: line.strip() for sha, line in zip(wanted, out) if not line.endswith(" missing")}
        for row in records:
            row["source_hash"] = row.get("source_hash") or blob.get(row.get("commit"))
            row["parent_hash"] = row.get("parent_hash") or blob.get(row.get("parent_commit"))
        self._ledger.rewrite([r for r in records if r["trial_id"] not in self._extra_rows])
        with self.repo.config_writer() as config:
            config.set_value(*MARKER, FORMAT_VERSION)
            config.set_value("gc", "auto", "0")

    # ---- records -------------------------------------------------------------------------------------

    def _add_record(self, row: dict) -> None:
        """A row this writer recorded, kept in memory once the rows were read (until then the ledger holds it)."""
        if self._records is None:
            return
        if self._records and _record_order(self._records[-1]) > _record_order(row):
            self._records_sorted = False
        self._records.append(row)

    def trial_records(self) -> list[dict]:
        """Every judged trial's ledger row, by finish time: the ledger (read on the first call; plus rows a kill
        kept out of it, from their trailers) and what this writer recorded since; git is not read per record."""
        records = self._all_records()
        if not self._records_sorted:
            records.sort(key=_record_order)
            self._records_sorted = True
        return list(records)

    def records_of(self, trial_ids) -> list[dict]:
        """The rows of these judged trials, by finish time, reading only the ledger files that hold them (the
        newest first) while the whole ledger was not read: what a replay from a state snapshot needs."""
        wanted = set(trial_ids)
        if self._records is not None:
            return [r for r in self.trial_records() if r["trial_id"] in wanted]
        rows = {t: r for t, r in self._extra_rows.items() if t in wanted}
        rows.update(ledger.rows_of(self.path, wanted & self._ledger_ids()))
        return sorted(rows.values(), key=_record_order)

    def ledger_size(self) -> int:
        """Rows (trials) the ledger holds."""
        return len(self._ledger_ids())

    def missing_from_ledger(self) -> set:
        """Judged trials whose ledger row a kill kept out (or whose file is unreadable): repair writes them."""
        return set(self._judged) - self._ledger_ids()

    def judged_ids(self) -> set:
        """Ids of every trial git holds as judged (refs/trials/*), ledger or not."""
        return set(self._judged)

    def judged_count(self) -> int:
        """How many trials git holds as judged (refs/trials/*), ledger or not."""
        return len(self._judged)

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

    # ---- inbox ---------------------------------------------------------------------------------------

    def inbox_refs(self) -> list[tuple[str, str]]:
        """(refname, sha) of candidate commits pushed to refs/inbox/* (read from git each time: others push them)."""
        out = self._git("for-each-ref", "--format=%(objectname) %(refname)", INBOX.rstrip("/"))
        pairs = (line.split(" ", 1) for line in out.splitlines() if line)
        return sorted((ref, sha) for sha, ref in pairs if ref.startswith(INBOX))

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
        self._keep += [(commit.tree.hexsha, "")]
        pend_sha = self._commit(commit.tree.hexsha, [parent] if parent else [], compose_message(message, trailers),
                                keep=False)
        self._refs_apply([f"create {PENDING}{trial_id} {pend_sha}", f"delete {refname} {sha}"])
        pend = Pending(trial_id, pend_sha, member, parent, proposer, message)
        self._pending[trial_id] = pend
        return pend, reason

    def _inbox_member(self, refname: str, parent: str) -> tuple[str, str]:
        """The member an inbox commit belongs to: named by refs/inbox/<member>/<name>, else the branch of its parent."""
        heads = self._heads
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

    # ---- repair: replays the write protocol after a kill ---------------------------------------------

    def repair(self) -> dict:
        """Finish every write a kill interrupted: stale git locks, the lineage journal, lost promotions, pending
        refs of judged trials, ledger rows missing (or in unreadable files) written from the trailers. Idempotent."""
        self._writable()
        report = {"git_locks": self._clear_stale_git_locks(), "lineage": self._replay_lineage()}
        aside, self._aside = self._aside, {"moved": [], "backup": None}
        missing = sorted(set(self._judged) - self._ledger.ids)
        entries, problems = self._entries_from_trailers(missing)
        report["promotions"] = self._replay_promotions(entries)
        report["pending_dropped"] = self._drop_judged_pending()
        report["unreadable_trials"] = problems
        written = self._ledger.extend([row for row, _ in entries])
        if self._records is not None:
            known = {r["trial_id"] for r in self._records}
            self._records += [row for row, _ in entries if row["trial_id"] not in known]
            self._records.sort(key=_record_order)
        report["ledger"] = {"written": written, "moved": aside["moved"], "backup": aside["backup"]}
        return report

    def _clear_stale_git_locks(self) -> list[str]:
        """Ref lock files a killed git left behind (no ref name of ours ends in .lock)."""
        git_dir = Path(self.repo.git_dir)
        candidates = [*(git_dir / "refs").rglob("*.lock"), git_dir / "packed-refs.lock", git_dir / "HEAD.lock",
                      git_dir / "index.lock"]
        cutoff = time.time() - STALE_GIT_LOCK_SECONDS
        removed = [p for p in candidates if p.is_file() and p.stat().st_mtime < cutoff]
        for path in removed:
            path.unlink()
        return [str(p) for p in removed]

    def _replay_lineage(self) -> list[str]:
        """Create branches the journal says exist, finish retirements the journal says happened."""
        done = []
        for event in self._events():
            member, kind = event.get("Member", ""), event.get("Event")
            if kind in ("create", "fork") and member not in self._heads and member not in self._retired:
                self._create_branch(member, event["At"])
                done.append(f"created pop/{member} at {event['At'][:SHORT]}")
            elif kind == "retire" and member in self._heads:
                self._finish_retire(member, self._heads[member])
                done.append(f"retired {member}")
        return done

    def _replay_promotions(self, entries: list[tuple[dict, dict]]) -> list[str]:
        """Move a branch that still sits on a promoted trial's Head-Before to that trial (chains included); only
        trials missing from the ledger can have lost a move (finish writes the row after the transaction)."""
        promoted = [(row, tr) for row, tr in entries if tr.get("Promoted") == "yes" and tr.get("Head-Before")]
        done = []
        for _ in range(len(promoted)):
            moves = [(row, tr) for row, tr in promoted
                     if self._heads.get(row["member"]) == tr["Head-Before"] != row["commit"]]
            if not moves:
                break
            row, tr = moves[0]
            self._move_branch(row["member"], row["commit"], tr["Head-Before"])
            done.append(f"pop/{row['member']} -> {row['commit'][:SHORT]} (trial {row['trial_id']})")
        return done


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
