"""What every proposer produces (Proposal) and the checks every candidate passes before it is queued.

Only train.py may change; the new source must parse, define build_model() and guard its training (native), or
train at top level with its helpers from `prepare` (adopted, judge/adopted.py)."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from judge.adopted import ADOPTED, protocol
from judge.source_tree import parsed

TRAIN_PY = "train.py"                    # the one file of a member's tree that candidates may change
MAX_MESSAGE_CHARS = 4000                 # longer commit messages are cut


@dataclass
class Proposal:
    """One candidate train.py for a member, built on `parent_commit` (the member's head)."""
    member: str
    parent_commit: str
    source: str
    proposer: str                        # mutate | agent | inbox
    message: str
    trial_id: str | None = None
    extra: dict = field(default_factory=dict)


def _norm(path: str) -> str:
    text = str(path).strip()
    return str(PurePosixPath(text[2:] if text.startswith("./") else text))


def only_train_py_changed(files) -> tuple[bool, str]:
    """(ok, reason): ok only when the changed paths are exactly train.py."""
    changed = sorted({_norm(f) for f in files})
    if not changed:
        return False, "no file changed"
    others = [f for f in changed if f != TRAIN_PY]
    if others:
        return False, f"changes files other than {TRAIN_PY}: {', '.join(others)}"
    return True, ""


def _is_main_guard(stmt: ast.stmt) -> bool:
    test = stmt.test if isinstance(stmt, ast.If) else None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1


def validate_source(source: str) -> tuple[bool, str]:
    """(ok, reason): the source parses, defines build_model() without required arguments at module
    level, and keeps its training under `if __name__ == "__main__":`; or follows the adopted protocol."""
    try:
        tree = parsed(source)
    except SyntaxError as exc:
        return False, f"{TRAIN_PY} line {exc.lineno}: syntax error: {exc.msg}"
    if protocol(source) == ADOPTED:
        return True, ""
    builds = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "build_model"]
    if not builds:
        return False, f"{TRAIN_PY}: no module-level function build_model()"
    args = builds[-1].args
    required = len(args.posonlyargs) + len(args.args) - len(args.defaults)
    required += sum(1 for d in args.kw_defaults if d is None)
    if required > 0:
        return False, f"{TRAIN_PY} line {builds[-1].lineno}: build_model() must take no required arguments"
    if not any(_is_main_guard(s) for s in tree.body):
        return False, f"{TRAIN_PY}: training is not guarded by 'if __name__ == \"__main__\":'"
    return True, ""


def clean_message(text: str, fallback: str) -> str:
    """A commit message: stripped, cut to MAX_MESSAGE_CHARS, or the fallback when empty."""
    text = (text or "").strip()
    return text[:MAX_MESSAGE_CHARS] if text else fallback
