"""The trial worker without Ray around it: live state is plain data while a trial runs, and with overlap
the next trial is launched before the current one stops training."""
from __future__ import annotations

import pickle
import threading
import time
import uuid

from orchestrator.live import actor_line
from trainer.actor import TrialWorker
from trainer.spec import TrialSpec


def spec(tid, source, data_spec, seconds=3.0, overlap=True) -> dict:
    return TrialSpec(trial_id=tid, source=source, data_dir=data_spec.data_dir, budget_seconds=seconds,
                     seq_len=64, eval_tokens=2048, startup_allowance=60.0, wait_for_go=overlap).to_dict()


def test_live_state_is_picklable_and_the_next_trial_starts_up_early(data_spec, tiny_source):
    worker = TrialWorker("cpu0", "cpu")
    results = {}
    seen = []

    def run(tid):
        results[tid] = worker.run(spec(tid, tiny_source, data_spec), {"member": "m0"})

    threads = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    threads[0].start()
    time.sleep(0.5)
    threads[1].start()
    deadline = time.time() + 120
    while any(t.is_alive() for t in threads) and time.time() < deadline:
        live = pickle.loads(pickle.dumps(worker.live()))    # what Ray ships to the driver
        seen.extend(live.values())
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=5)
    assert results["a"]["status"] == "ok" and results["b"]["status"] == "ok", results
    assert {s["phase"] for s in seen} >= {"training", "judging"}
    assert any(s["trial_id"] == "b" and s["phase"] in ("starting", "ready") for s in seen
               if any(o["trial_id"] == "a" and o["phase"] == "training" for o in seen))
    a, b = results["a"]["timeline"], results["b"]["timeline"]
    assert b["launch"] < a["finish"]                # b started up while a was still training
    assert abs(b["go"] - a["finish"]) < 1.0          # and was let go when a stopped training
    line = actor_line({"slot": "cpu0"}, seen[-1], time.time())
    assert line.startswith("cpu0") and seen[-1]["trial_id"] in line


def run_all(worker, specs: list[dict]) -> dict:
    results = {}

    def run(s):
        results[s["trial_id"]] = worker.run(s, {"member": "m0"})

    threads = [threading.Thread(target=run, args=(s,)) for s in specs]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=300)
    return results


def test_only_one_trial_starts_up_beside_the_one_training(data_spec, tiny_source):
    """Three trials submitted at once: the third is launched only once the second trains, so at most one
    start-up (and its device memory) sits beside the training trial."""
    worker = TrialWorker("cpu0", "cpu")
    results = run_all(worker, [spec(t, tiny_source, data_spec, seconds=6.0) for t in ("a", "b", "c")])
    assert all(r["status"] == "ok" for r in results.values()), results
    first, second, third = sorted((r["timeline"] for r in results.values()), key=lambda t: t["launch"])
    assert second["launch"] >= first["start"] - 0.3
    assert third["launch"] >= second["start"] - 0.3
    assert third["launch"] < second["finish"]         # still early: it starts up while the second trains
    for r in results.values():                        # start-up is launch to ready, not the wait for go
        assert abs(r["startup_seconds"] - (r["timeline"]["ready"] - r["timeline"]["launch"])) < 0.5
    measured = sorted(r["timeline"]["ready"] - r["timeline"]["launch"] for r in results.values())
    assert max(abs(a - b) for a, b in zip(sorted(worker._startups), measured)) < 0.5   # the launch lead's input


def test_out_of_memory_while_starting_beside_others_reruns_alone(data_spec, tiny_source):
    """A candidate that runs out of device memory while it starts up beside a training trial is not
    blamed: it runs once more with the device to itself, after the other trial's judge."""
    marker = f"oom-once-{uuid.uuid4().hex}"
    once = (f"import os as _os\n_mark = _os.path.join(_os.environ['TORCHINDUCTOR_CACHE_DIR'], {marker!r})\n"
            "if not _os.path.exists(_mark):\n    open(_mark, 'w').close()\n"
            "    raise RuntimeError('CUDA out of memory. Tried to allocate 4.00 GiB')\n\n\n")
    hungry = tiny_source.replace("def main():", once + "def main():", 1)
    results = run_all(TrialWorker("cpu0", "cpu"), [spec("a", tiny_source, data_spec),
                                                   spec("b", hungry, data_spec)])
    a, b = results["a"], results["b"]
    assert a["status"] == "ok" and b["status"] == "ok", (a["reason"], b["reason"])
    assert "retried_alone" in b["timeline"] and b["timeline"]["first_attempt"]["launch"] < a["timeline"]["finish"]
    assert b["timeline"]["launch"] >= a["timeline"]["judge_end"] - 0.3     # alone: after a's judge
    # the same crash with the device to itself is the candidate's: recorded as a crash, no second retry
    always = tiny_source.replace("def main():", "raise RuntimeError('CUDA out of memory')\n\n\ndef main():", 1)
    again = run_all(TrialWorker("cpu0", "cpu"), [spec("c", tiny_source, data_spec), spec("d", always, data_spec)])
    assert again["d"]["status"] == "crash" and "out of memory" in again["d"]["reason"]
    assert "retried_alone" in again["d"]["timeline"]
