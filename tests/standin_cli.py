"""A stand-in for a coding-agent CLI (claude, codex, gemini, aider, opencode): the test copies it under each name.

Records the argv, POPSEARCH_* environment and working folder it got to $STANDIN_RECORD/<name>.json, then sets
DEPTH = 3 in train.py; with $STANDIN_FAIL it prints a complaint to stderr and exits 2 instead."""
import json
import os
import re
import sys
from pathlib import Path


def prompt_of(name: str, argv: list[str]) -> str:
    """The prompt the CLI was given: aider reads it from --message-file, the others get it as an argument."""
    if name == "aider":
        return Path(argv[argv.index("--message-file") + 1]).read_text()
    return next((a for a in argv if "# Your task" in a), "")


def main() -> int:
    name, argv = Path(sys.argv[0]).name, sys.argv[1:]
    record = {"name": name, "argv": argv, "cwd": os.getcwd(), "prompt": prompt_of(name, argv),
              "env": {k: v for k, v in os.environ.items() if k.startswith("POPSEARCH_")}}
    Path(os.environ["STANDIN_RECORD"], f"{name}.json").write_text(json.dumps(record))
    if os.environ.get("STANDIN_FAIL"):
        print(f"{name}: no credentials configured", file=sys.stderr)
        return 2
    if name == "aider":              # aider's own files go where --chat-history-file says, outside the worktree
        Path(argv[argv.index("--chat-history-file") + 1]).write_text("chat\n")
    text = Path("train.py").read_text()
    Path("train.py").write_text(re.sub(r"^DEPTH\s*=\s*\d+", "DEPTH = 3", text, count=1, flags=re.M))
    print(f"{name}: three layers train more steps in the same budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
