"""The static check at proposal time: a refused candidate is recorded as rejected with the lines it names, never
queued (the seed's runs are not checked); upstream gc tuning and `from kernels import get_kernel` pass, no more."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from judge.spec import KERNEL_ENV
from orchestrator.config import Config
from orchestrator.driver import Driver
from orchestrator.live import LiveBoard
from orchestrator.population import BASELINE
from orchestrator.proposers.base import Proposal
from trainer.static_check import check_source

REPO = Path(__file__).resolve().parents[1]


def test_a_candidate_the_static_check_refuses_is_recorded_as_rejected(tmp_path):
    cfg = Config(archive=str(tmp_path / "archive"))
    driver = Driver(cfg, out=io.StringIO())
    driver.open_archive()
    driver.board = LiveBoard(io.StringIO())
    head = driver.archive.heads()["m0"]
    seed = driver.archive.source(head)
    bad = seed + "\nimport subprocess\nsubprocess.run(['true'])\n"
    assert driver.enqueue(Proposal(member="m0", parent_commit=head, source=bad, proposer="agent",
                                   message="sneaky")) is None
    assert not driver.ready and driver.finished == 1
    [row] = driver.archive.trial_records()
    assert row["status"] == "invalid" and row["verdict"] == "rejected"
    assert row["reason"].startswith("static check: line ") and "imports subprocess" in row["reason"]
    job = driver.enqueue(Proposal(member="m0", parent_commit=head, source=seed, proposer=BASELINE, message="seed"))
    assert job is not None and list(driver.ready) == [job]
    tuned = "import gc\n" + seed + "\ngc.collect()\ngc.freeze()\n"       # what adopted upstream scripts do
    assert driver.enqueue(Proposal(member="m0", parent_commit=head, source=tuned, proposer="agent",
                                   message="freeze the collector")) is not None
    driver.archive.close()


# ---------------------------------------------------------------- what adopted upstream scripts use

UPSTREAM_GC_AND_FA3 = """import gc
import torch
from kernels import get_kernel

cap = (9, 0)
repo = "varunneal/flash-attention-3" if cap == (9, 0) else "kernels-community/flash-attn3"
fa3 = get_kernel(repo).flash_attn_interface
for step in range(3):
    if step == 0:
        gc.collect()
        gc.freeze()
        gc.disable()
    elif (step + 1) % 5000 == 0:
        gc.collect()
if not gc.isenabled():
    gc.enable()
"""


def test_upstream_gc_tuning_and_the_fa3_route_pass_the_static_check():
    assert check_source(UPSTREAM_GC_AND_FA3) == []
    assert check_source("from gc import collect, freeze\ncollect()\nfreeze()\n") == []


@pytest.mark.parametrize("source, expected", [
    ("import gc\nx = gc.get_objects()\n", "uses gc.get_objects"),
    ("import gc\nx = gc.get_referrers(1)\n", "uses gc.get_referrers"),
    ("import gc as g\nx = g.get_referents(1)\n", "uses gc.get_referents"),
    ("import gc\nx = gc.garbage\n", "uses gc.garbage"),
    ("import gc\ngc.callbacks.append(print)\n", "uses gc.callbacks"),
    ("from gc import get_objects\n", "imports gc.get_objects"),
    ("import gc\nalias = gc\n", "uses the gc module itself"),
    ("import gc\nprint(getattr(gc, 'collect'))\n", "uses the gc module itself"),
    ("import kernels\n", "imports kernels"),
    ("import kernels.load\n", "imports kernels.load"),
    ("from kernels import get_local_kernel\n", "imports get_local_kernel from kernels"),
    ("from kernels.load import get_kernel\n", "imports kernels.load"),
    ("from kernels import get_kernel\nx = get_kernel.__wrapped__\n", "uses kernels.get_kernel.__wrapped__"),
])
def test_the_rest_of_gc_and_kernels_stays_closed(source, expected):
    problems = check_source(source)
    assert any(expected in p for p in problems), problems


def test_the_guard_pins_where_kernel_code_is_found(tmp_path):
    """After lock-down LOCAL_KERNELS and the hub caches cannot be redirected (a candidate could point
    get_kernel at code it wrote); other settings still can be."""
    code = ("import os\nfrom judge import guard\nfrom judge.spec import KERNEL_ENV\n"
            "refusals = guard.lock_down(allow_write=[os.getcwd()])\n"
            "os.environ['PYTORCH_CUDA_ALLOC_CONF'] = 'expandable_segments:True'\n"
            "for name in KERNEL_ENV:\n"
            "    try:\n        os.environ[name] = os.getcwd()\n    except PermissionError:\n        pass\n"
            "print(sorted(k for k in KERNEL_ENV if os.environ.get(k) == os.getcwd()), len(refusals))\n")
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", str(len(KERNEL_ENV))], out.stdout
    assert "POPSEARCH-VIOLATION: changes LOCAL_KERNELS" in out.stderr
