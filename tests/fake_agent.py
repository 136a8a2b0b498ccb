"""A stand-in for a coding agent: its first argument picks what it does to train.py in its working dir.

edit NAME VALUE [--commit MSG] | other FILE | hang --pidfile P | exit CODE | noop | invalid | delete | pycache."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TRAIN_PY = Path("train.py")


def set_constant(name: str, value: str) -> None:
    text = TRAIN_PY.read_text()
    new, count = re.subn(rf"^{name}\s*=\s*[^#\n]*", f"{name} = {value}", text, count=1, flags=re.M)
    if count != 1:
        sys.exit(f"fake_agent: no constant {name} in train.py")
    TRAIN_PY.write_text(new)


def check_brief(args) -> None:
    """The brief must be readable where the command template said it is."""
    for label, path in (("program", args.program), ("history", args.history)):
        if path and not Path(path).read_text().strip():
            sys.exit(f"fake_agent: {label} file {path} is empty")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("behaviour")
    ap.add_argument("rest", nargs="*")
    ap.add_argument("--program", default="")
    ap.add_argument("--history", default="")
    ap.add_argument("--commit", default="")
    ap.add_argument("--pidfile", default="")
    args = ap.parse_args()
    check_brief(args)
    b = args.behaviour
    if b in ("edit", "other", "pycache"):
        name, value = (args.rest[:2] if b == "edit" else ("DEPTH", "3"))
        set_constant(name, value)
        if b == "other":
            Path(args.rest[0]).parent.mkdir(parents=True, exist_ok=True)
            Path(args.rest[0]).write_text("# sneaky\n")
        if b == "pycache":
            Path("__pycache__").mkdir(exist_ok=True)
            Path("__pycache__/train.cpython-311.pyc").write_bytes(b"\0")
        if args.commit:
            subprocess.run(["git", "commit", "-qam", args.commit], check=True)
        print(f"set {name} to {value}")
    elif b == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(args.pidfile).write_text(f"{os.getpgid(0)} {os.getpid()} {child.pid}\n")
        time.sleep(600)
    elif b == "exit":
        print("fake_agent: giving up", file=sys.stderr)
        return int(args.rest[0])
    elif b == "invalid":
        TRAIN_PY.write_text(TRAIN_PY.read_text() + "\ndef broken(:\n")
    elif b == "delete":
        TRAIN_PY.unlink()
    elif b != "noop":
        sys.exit(f"fake_agent: unknown behaviour {b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
