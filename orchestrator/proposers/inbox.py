"""The inbox proposer: candidates from outside popsearch, as commits pushed to refs/inbox/* of the archive or
as patch files (git format-patch output or plain unified diffs) dropped into ARCHIVE/inbox/.

Each is consumed once: refs become pending trials (rejected ones are recorded as invalid with their reason),
patch files move to inbox/done/ or inbox/rejected/ (beside a .reason file). Only train.py may change."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from orchestrator.gitcmd import GitFailed, git
from orchestrator.proposers.base import TRAIN_PY, Proposal, clean_message, only_train_py_changed, validate_source

INBOX_DIR = "inbox"                      # ARCHIVE/inbox/ holds dropped patch files
DONE_DIR = "done"
REJECTED_DIR = "rejected"
REASON_SUFFIX = ".reason"
PATCH_SUFFIXES = (".patch", ".diff")     # other files (and dotfiles, e.g. a patch being written) are left alone
MEMBER_SEPARATOR = "--"                  # <member>--<name>.patch
INBOX_REF_PREFIX = "refs/inbox/"
MEMBER_LINE = re.compile(r"^Member:\s*(\S+)\s*$", re.M)
PATCH_PREFIX = re.compile(r"^\[PATCH[^\]]*\]\s*")


def scan_inbox(archive, patch_dir=None, new_trial_id=None, on_reject=None, on_recorded=None) -> list[Proposal]:
    """Every new inbox candidate as a Proposal, each consumed once.

    Ref proposals come with trial_id set and extra["pending_commit"]: the archive already holds them as
    refs/pending/<id> (do not add_pending them again). Patch proposals are plain (trial_id None).
    new_trial_id: callable giving the next trial id (default archive.new_trial_id);
    on_reject: called with one line per rejected candidate; on_recorded: with the ledger row of each ref
    recorded as rejected (the driver counts it)."""
    say = on_reject or (lambda line: None)
    ids = new_trial_id or archive.new_trial_id
    folder = Path(patch_dir) if patch_dir else Path(archive.path) / INBOX_DIR
    return scan_refs(archive, ids, say, on_recorded) + scan_patches(archive, folder, say)


# ----------------------------------------------------------------------------- refs

def _trailer_member(archive, sha: str) -> str | None:
    text = git(archive.path, "log", "-1", "--format=%B", sha, check=False)
    found = MEMBER_LINE.findall(text) if text is not None else []
    return found[-1] if found else None


def _route_by_trailer(archive, ref: str, sha: str, heads: dict) -> str:
    """refs/inbox/<name> whose commit says `Member: <m>` becomes refs/inbox/<m>/<name>, so the archive
    files it under that member; any other ref is returned as it is."""
    name = ref[len(INBOX_REF_PREFIX):]
    if name.split("/", 1)[0] in heads and "/" in name:
        return ref
    member = _trailer_member(archive, sha)
    if member not in heads:
        return ref
    new = f"{INBOX_REF_PREFIX}{member}/{name.replace('/', '-')}"
    moved = git(archive.path, "update-ref", "--stdin", stdin=f"create {new} {sha}\ndelete {ref} {sha}\n", check=False)
    return new if moved is not None else ref


def _record_rejected(archive, trial_id: str, reason: str) -> dict:
    return archive.finish(trial_id, {"status": "invalid", "verdict": "rejected", "reason": reason,
                                     "finished_at": time.time()}, promote=False)


def scan_refs(archive, new_trial_id, say, on_recorded=None) -> list[Proposal]:
    """Consume every refs/inbox/* commit: a pending trial each; the invalid ones recorded as rejected."""
    heads = archive.heads()
    found = []
    for ref, sha in archive.inbox_refs():
        ref = _route_by_trailer(archive, ref, sha, heads)
        trial_id = new_trial_id()
        pend, reason = archive.consume_inbox(ref, trial_id)
        source = "" if reason else archive.source(pend.sha)
        if not reason:
            reason = validate_source(source)[1]
        if reason:
            row = _record_rejected(archive, trial_id, reason)
            if on_recorded:
                on_recorded(row)
            say(f"inbox: rejected {ref} ({sha[:10]}) as trial {trial_id}: {reason}")
            continue
        found.append(Proposal(member=pend.member, parent_commit=pend.parent, source=source, proposer="inbox",
                              message=clean_message(pend.message, f"candidate from {ref}"), trial_id=trial_id,
                              extra={"pending_commit": pend.sha, "inbox_ref": ref, "inbox_commit": sha}))
    return found


# ----------------------------------------------------------------------------- patch files

def _strip_name(name: str) -> str:
    """A path from a ---/+++ header: no timestamp, no quotes, no a/ b/ (or other first) directory."""
    name = name.split("\t", 1)[0].strip().strip('"')
    if name == "/dev/null":
        return name
    return name.split("/", 1)[1] if "/" in name else name


def patch_files(text: str) -> list[str]:
    """The paths a patch touches (git-style or plain unified diff)."""
    files = set()
    for line in text.splitlines():
        if line.startswith("diff --git "):
            files |= {_strip_name(p) for p in line[len("diff --git "):].split(" ") if p}
        elif line.startswith(("--- ", "+++ ")):
            files.add(_strip_name(line[4:]))
    files.discard("/dev/null")
    return sorted(files)


def _plain_pairs_name_train_py(text: str) -> bool:
    """For a plain diff (no `diff --git`): does each ---/+++ pair name train.py on one side?"""
    olds = [_strip_name(l[4:]) for l in text.splitlines() if l.startswith("--- ")]
    news = [_strip_name(l[4:]) for l in text.splitlines() if l.startswith("+++ ")]
    return bool(olds) and len(olds) == len(news) and all(TRAIN_PY in pair for pair in zip(olds, news))


def _files_problem(text: str) -> str:
    if "diff --git " in text:
        return only_train_py_changed(patch_files(text))[1]
    if _plain_pairs_name_train_py(text):
        return ""
    files = patch_files(text)
    return only_train_py_changed(files)[1] if files else "no unified diff found in the file"


def _as_git_patch(text: str) -> str:
    """A plain diff of train.py with its ---/+++ headers rewritten to a/train.py and b/train.py."""
    if "diff --git " in text:
        return text
    out = []
    for line in text.splitlines(keepends=True):
        if line.startswith("--- "):
            line = f"--- a/{TRAIN_PY}\n"
        elif line.startswith("+++ "):
            line = f"+++ b/{TRAIN_PY}\n"
        out.append(line)
    return "".join(out)


def apply_patch(source: str, text: str) -> tuple[str | None, str]:
    """(patched train.py, '') or (None, why it does not apply), with `git apply` outside any repository."""
    with tempfile.TemporaryDirectory(prefix="popsearch-inbox-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        (work / TRAIN_PY).write_text(source)
        (Path(tmp) / "change.patch").write_text(_as_git_patch(text))
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": tmp}
        try:
            git(work, "apply", "--whitespace=nowarn", "-p1", "../change.patch", env=env)
        except GitFailed as exc:
            return None, f"patch does not apply: {' '.join(exc.stderr.split())[:300]}"
        return (work / TRAIN_PY).read_text(), ""


def _header(text: str) -> str:
    """The part of a patch file before its first diff."""
    match = re.search(r"^(diff --git |--- )", text, re.M)
    return text[:match.start()] if match else text


def patch_member(path: Path, text: str) -> str | None:
    """The member a patch is for: a `Member: <name>` line before the diff, else `<member>--<name>.patch`."""
    found = MEMBER_LINE.findall(_header(text))
    if found:
        return found[-1]
    stem = path.name
    return stem.split(MEMBER_SEPARATOR, 1)[0] if MEMBER_SEPARATOR in stem else None


def patch_message(path: Path, text: str) -> str:
    """The Subject and body of a format-patch mail, or the text before a plain diff, or the file name."""
    header = _header(text)
    lines = header.splitlines()
    subject = next((i for i, l in enumerate(lines) if l.startswith("Subject:")), None)
    if subject is not None:
        title = [lines[subject][len("Subject:"):].strip()]
        rest = lines[subject + 1:]
        while rest and rest[0].startswith((" ", "\t")):
            title.append(rest.pop(0).strip())
        body = rest[rest.index("") + 1:] if "" in rest else []
        body = body[:body.index("---")] if "---" in body else body
        lines = [PATCH_PREFIX.sub("", " ".join(title)), ""] + body
    kept = [l for l in lines if not MEMBER_LINE.match(l)]
    return clean_message("\n".join(kept), f"inbox patch {path.name}")


def _move(path: Path, folder: Path) -> Path:
    """Move a processed patch into folder, never over an earlier one of the same name."""
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / path.name, 1
    while target.exists():
        target, n = folder / f"{path.name}.{n}", n + 1
    shutil.move(str(path), str(target))
    return target


def _check_patch(path: Path, text: str, heads: dict) -> tuple[str | None, str]:
    """(member, '') when the patch names a living member and touches only train.py, else (None, reason)."""
    member = patch_member(path, text)
    if member is None:
        return None, (f"no member named: call the file <member>{MEMBER_SEPARATOR}<name>{path.suffix} "
                      "or put a 'Member: <name>' line before the diff")
    if member not in heads:
        return None, f"member {member!r} is not a living member (members: {', '.join(sorted(heads))})"
    problem = _files_problem(text)
    return (None, problem) if problem else (member, "")


def _take_patch(archive, path: Path, heads: dict) -> tuple[Proposal | None, str]:
    """(proposal, '') for a good patch file, else (None, reason)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    member, reason = _check_patch(path, text, heads)
    if member is None:
        return None, reason
    parent = heads[member]
    parent_source = archive.source(parent)
    source, reason = apply_patch(parent_source, text)
    if source is None:
        return None, f"{reason} (on {member}'s head {parent[:10]})"
    if source == parent_source:
        return None, f"the patch leaves {member}'s {TRAIN_PY} unchanged"
    ok, reason = validate_source(source)
    if not ok:
        return None, reason
    return Proposal(member=member, parent_commit=parent, source=source, proposer="inbox",
                    message=patch_message(path, text)), ""


def scan_patches(archive, folder: Path, say) -> list[Proposal]:
    """Consume every *.patch / *.diff file directly in folder (sorted by name)."""
    if not folder.is_dir():
        return []
    heads = archive.heads()
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in PATCH_SUFFIXES
                       and not p.name.startswith(".")):
        proposal, reason = _take_patch(archive, path, heads)
        if proposal is None:
            moved = _move(path, folder / REJECTED_DIR)
            moved.with_name(moved.name + REASON_SUFFIX).write_text(reason + "\n")
            say(f"inbox: rejected {path.name}: {reason}")
            continue
        proposal.extra = {"inbox_patch": str(_move(path, folder / DONE_DIR))}
        found.append(proposal)
    return found
