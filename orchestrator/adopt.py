"""`popsearch adopt PATH`: a single-GPU autoresearch project (a git checkout of train.py with a results.tsv, or
one train.py) as a new population; its train.py, byte for byte, is the seed, its history the imported lineage.

Imported val_bpb values are the project's own evaluation: shown in status and reports, never compared."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.archive import IMPORTED_TRAILER, Archive
from orchestrator.gitcmd import git
from orchestrator.trailers import compose_message

SOURCE_FILE = "train.py"
RESULTS_FILE = "results.tsv"
RESULT_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
KEPT, RUN_STATUSES = "keep", ("keep", "discard", "crash")
NOT_COMPARED = "the project's own evaluation: shown, never compared with popsearch's val_bpb"


class AdoptError(ValueError):
    """PATH is not a project popsearch can adopt; the message names the file (and line) and what is wrong."""


@dataclass
class Run:
    """One row of results.tsv."""
    line: int
    commit: str
    val_bpb: str
    memory_gb: str
    status: str
    description: str


@dataclass
class Commit:
    sha: str
    subject: str
    source: str | None                # train.py at that commit; None where the commit has none


@dataclass
class Project:
    path: Path                        # the checkout (or the single file)
    seed: str                         # train.py at HEAD (or the file), as text decoded from its exact bytes
    commits: list[Commit] = field(default_factory=list)      # the branch, oldest first, HEAD last
    runs: list[Run] = field(default_factory=list)
    lost: dict = field(default_factory=dict)                # run commit -> train.py of runs not on the branch


# ------------------------------------------------------------------------------------------ reading
def read_project(path) -> Project:
    """The project at PATH: a git checkout holding train.py (and maybe results.tsv), or a train.py file."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise AdoptError(f"{path}: no such file or folder")
    if path.is_file():
        return Project(path, decoded(path.read_bytes(), path))
    if not (path / SOURCE_FILE).is_file():
        raise AdoptError(f"{path}: no {SOURCE_FILE} in this folder")
    if not _is_checkout(path):
        return Project(path, decoded((path / SOURCE_FILE).read_bytes(), path / SOURCE_FILE))
    commits = branch_commits(path)
    if not commits or commits[-1].source is None:
        raise AdoptError(f"{path}: {SOURCE_FILE} is not committed at HEAD (commit it, or adopt the file itself)")
    runs = read_results(path / RESULTS_FILE) if (path / RESULTS_FILE).exists() else []
    on_branch = {c.sha for c in commits}
    lost = {}
    for run in runs:
        full = _resolve(path, run.commit)
        if run.status != KEPT and full and full not in on_branch:
            lost[run.commit] = _source_at(path, full)
    return Project(path, commits[-1].source, commits, runs, lost)


def decoded(data: bytes, where: Path) -> str:
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdoptError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        compile(source, str(where), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise AdoptError(f"{where}:{exc.lineno}: does not parse: {exc.msg}") from None
    return source


def read_results(path: Path) -> list[Run]:
    """results.tsv rows (tab-separated, a header naming RESULT_COLUMNS first); AdoptError naming the line."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or tuple(c.strip() for c in lines[0].split("\t"))[:len(RESULT_COLUMNS)] != RESULT_COLUMNS:
        raise AdoptError(f"{path}:1: the header must be the tab-separated columns {', '.join(RESULT_COLUMNS)}")
    runs = []
    for number, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        cells = text.split("\t")
        if len(cells) < len(RESULT_COLUMNS) - 1:
            raise AdoptError(f"{path}:{number}: {len(cells)} columns, expected {len(RESULT_COLUMNS)}")
        cells = [c.strip() for c in cells] + [""] * (len(RESULT_COLUMNS) - len(cells))
        commit, bpb, memory, status = cells[:4]
        description = "\t".join(cells[4:])
        if status not in RUN_STATUSES:
            raise AdoptError(f"{path}:{number}: status {status!r}, expected one of {', '.join(RUN_STATUSES)}")
        if not commit or not all(c in "0123456789abcdef" for c in commit.lower()):
            raise AdoptError(f"{path}:{number}: commit {commit!r} is not a git commit id")
        runs.append(Run(number, commit.lower(), bpb, memory, status, description))
    return runs


def _git(path: Path, *args, binary: bool = False):
    return git(path, *args, binary=binary, check=False)       # None when git fails


def _is_checkout(path: Path) -> bool:
    top = _git(path, "rev-parse", "--show-toplevel")
    return top is not None and Path(top.strip()).resolve() == path


def _resolve(path: Path, short: str) -> str | None:
    out = _git(path, "rev-parse", "--verify", "--quiet", f"{short}^{{commit}}")
    return out.strip() if out else None


def _source_at(path: Path, sha: str) -> str | None:
    data = _git(path, "cat-file", "blob", f"{sha}:{SOURCE_FILE}", binary=True)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def branch_commits(path: Path) -> list[Commit]:
    """The first-parent chain of HEAD, oldest first, with train.py at each commit."""
    out = _git(path, "log", "--first-parent", "--reverse", "--format=%H%x00%s", "HEAD") or ""
    commits = []
    for line in out.splitlines():
        sha, _, subject = line.partition("\0")
        commits.append(Commit(sha, subject, _source_at(path, sha)))
    return commits


# ------------------------------------------------------------------------------------------ the plan
def run_trailers(run: Run | None, sha: str) -> list[tuple[str, object]]:
    pairs = [(IMPORTED_TRAILER, sha)]
    if run is not None:
        pairs += [("Imported-Status", run.status), ("Imported-Val-Bpb", run.val_bpb),
                  ("Imported-Memory-Gb", run.memory_gb), ("Imported-Description", run.description),
                  ("Imported-Row", run.line), ("Imported-Note", NOT_COMPARED)]
    return pairs


def runs_by_commit(project: Project) -> dict[str, Run]:
    """{full branch sha: its last results row} (rows name commits by a prefix)."""
    found = {}
    for run in project.runs:
        for c in project.commits:
            if c.sha.startswith(run.commit):
                found[c.sha] = run
    return found


def ancestors(project: Project) -> list[tuple[str, str]]:
    """(source, message) of the branch's commits before HEAD that hold a train.py, oldest first."""
    rows = runs_by_commit(project)
    return [(c.source, compose_message(f"imported: {c.subject}", run_trailers(rows.get(c.sha), c.sha)))
            for c in project.commits[:-1] if c.source is not None]


def seed_message(project: Project) -> str:
    if not project.commits:
        return compose_message(f"seed: adopted {project.path}", [(IMPORTED_TRAILER, str(project.path))])
    head = project.commits[-1]
    run = runs_by_commit(project).get(head.sha)
    return compose_message(f"seed: adopted {project.path} at {head.sha[:10]}: {head.subject}",
                           run_trailers(run, head.sha))


def imported_trials(project: Project) -> list[tuple[str, str, str | None, str]]:
    """(ref name, project commit the run was based on, its train.py or None, message) of every run not kept."""
    out, base = [], project.commits[0].sha if project.commits else ""
    rows = {c.sha: c for c in project.commits}
    for run in project.runs:
        on_branch = next((sha for sha in rows if sha.startswith(run.commit)), None)
        if run.status == KEPT:
            base = on_branch or base
            continue
        source = project.lost.get(run.commit, rows[on_branch].source if on_branch else None)
        message = compose_message(f"imported {run.status}: {run.description or run.commit}",
                                  run_trailers(run, run.commit) + [("Imported-Source", "found" if source else
                                                                    "not in the project's git")])
        out.append((f"row{run.line:05d}", base, source, message))
    return out


# ------------------------------------------------------------------------------------------ archive
def create_archive(project: Project, archive_dir, members: list[str]) -> Path:
    """The new archive: imported ancestors, the seed (the project's train.py), refs/imported/* for its other runs."""
    archive = Archive.create(archive_dir, project.seed, members, seed_message(project), ancestors(project))
    try:
        in_archive = {e[IMPORTED_TRAILER]: e["commit"] for e in archive.imported()}
        seed_sha = archive.tip(members[0])
        for name, base, source, message in imported_trials(project):
            archive.add_imported(name, in_archive.get(base, seed_sha), source, message)
    finally:
        archive.close()
    return archive.path


def history_lines(entries: list[dict]) -> list[str]:
    """One line per imported commit or run, for status and reports."""
    lines = []
    for e in entries:
        bpb = e.get("Imported-Val-Bpb") or "-"
        lines.append(f"{e['kind']:8s} {e.get(IMPORTED_TRAILER, '')[:10]:10s} {e.get('Imported-Status', '-'):8s} "
                     f"val_bpb {bpb} (imported)  {e.get('Imported-Description', '')}")
    return lines
