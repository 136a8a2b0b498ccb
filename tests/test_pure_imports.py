"""The pure modules (budget arithmetic, population, selection, verdicts, config changes) import neither torch nor
GitPython: each is imported in a fresh interpreter and its sys.modules checked."""
from __future__ import annotations

import json
import subprocess
import sys

PURE = ("orchestrator.budget", "orchestrator.population", "orchestrator.selection", "judge.verdict",
        "trainer.budget_math", "orchestrator.config_change")
HEAVY = ("torch", "git", "gitdb", "ray")


CHECK = """
import importlib, json, sys
heavy = lambda: sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({name: (importlib.import_module(name), heavy())[1] for name in PURE}))
"""


def test_the_pure_modules_pull_in_no_torch_and_no_git():
    """One fresh interpreter imports them in turn; after each, nothing heavy may have been loaded."""
    code = f"HEAVY, PURE = {HEAVY!r}, {PURE!r}" + CHECK
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {name: [] for name in PURE}


def test_the_reference_workload_is_chosen_by_device_type_without_torch():
    from trainer import budget_math
    assert budget_math.reference_flops("cuda:1") == budget_math.reference_flops("cuda") > \
        budget_math.reference_flops("cpu")
    assert budget_math.flops_time_cap(budget_math.reference_flops("cpu") * 40, 10.0, "cpu") == 16.0
