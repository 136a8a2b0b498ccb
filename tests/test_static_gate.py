"""Proposal validation runs the static check: a candidate it refuses is recorded as rejected with the lines it
names, never queued for a device; the seed's own runs are not checked."""
import io

from orchestrator.config import Config
from orchestrator.driver import Driver
from orchestrator.live import LiveBoard
from orchestrator.population import BASELINE
from orchestrator.proposers.base import Proposal


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
    driver.archive.close()
