"""The trial worker without Ray around it: live state is plain data while a trial runs, and with overlap
the next trial is launched before the current one stops training."""
from __future__ import annotations

import pickle
import threading
import time

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
