"""Tests of trainer.calibrate: the budget arithmetic with numbers, and real speed measurements on CPU,
one of them in a process throttled to a fraction of a core by SIGSTOP/SIGCONT duty cycling."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
import torch

from trainer import calibrate as C

RUN_MS, STOP_MS = 0.02, 0.03          # throttled worker: runs 40% of the time


def test_budget_arithmetic():
    assert C.budget_factor(100.0, 50.0) == 2.0
    assert C.budget_factor(100.0, 200.0) == 0.5
    assert C.normalized_budget(300.0, 2.0) == 600.0
    assert C.median_speed([3.0, 1.0, 2.0]) == 2.0
    assert C.median_speed([1.0, 2.0, 3.0, 10.0]) == 2.5
    with pytest.raises(ValueError):
        C.budget_factor(100.0, 0.0)
    with pytest.raises(ValueError):
        C.median_speed([])
    with pytest.raises(ValueError):
        C.median_speed([1.0, -2.0])
    with pytest.raises(ValueError):
        C.normalized_budget(0.0, 1.0)


def test_startup_allowance():
    assert C.startup_allowance(10.0, floor=60.0, multiple=2.0) == 60.0
    assert C.startup_allowance(40.0, floor=60.0, multiple=2.0) == 80.0
    assert C.startup_allowance([10.0, 45.0, 30.0], floor=20.0, multiple=1.5) == 67.5
    assert C.startup_allowance([], floor=20.0, multiple=1.5) == 20.0


def test_flops_helpers():
    assert C.flops_budget(300.0, 1000.0, 6e6) == 6e6 * 1000 * 300
    per_unit = C.reference_flops("cpu")
    assert per_unit > 0
    # a device doing 10 units/s at 25% of the reference FLOP rate
    assert C.flops_time_cap(per_unit * 10 * 60, 10.0, "cpu", efficiency=0.25) == pytest.approx(240.0)
    with pytest.raises(ValueError):
        C.flops_time_cap(0.0, 10.0, "cpu")


def test_measure_speed_in_process_restores_threads():
    before = torch.get_num_threads()
    speed = C.measure_speed("cpu", repeats=2, threads=1, repeat_seconds=0.05)
    assert speed > 0
    assert torch.get_num_threads() == before


def _duty_cycle(pid: int, done: threading.Event) -> None:
    """Let `pid` run RUN_MS out of every RUN_MS + STOP_MS seconds until done."""
    try:
        while not done.is_set():
            time.sleep(RUN_MS)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(STOP_MS)
            os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _speed_of_worker(throttle: bool) -> float:
    proc = subprocess.Popen(C.speed_command("cpu", repeats=3, threads=1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    done = threading.Event()
    thread = threading.Thread(target=_duty_cycle, args=(proc.pid, done), daemon=True)
    if throttle:
        thread.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        done.set()
        if throttle:
            thread.join()
            try:
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, err
    return C.parse_speed_output(out)


def test_throttled_worker_measures_slower_and_gets_a_longer_budget():
    fast = _speed_of_worker(throttle=False)
    slow = _speed_of_worker(throttle=True)
    assert slow < 0.75 * fast
    factor = C.budget_factor(fast, slow)          # the unthrottled core is the reference device
    assert factor > 1.3
    assert C.normalized_budget(10.0, factor) > 13.0
    # flops mode: the same FLOPs get a proportionally longer wall-clock cap on the slow worker
    flops = 1e12
    assert C.flops_time_cap(flops, slow, "cpu") == pytest.approx(factor * C.flops_time_cap(flops, fast, "cpu"))
    # the cluster median of {reference, slow, slow} is the slow speed: then the slow device's factor is 1
    assert C.budget_factor(C.median_speed([fast, slow, slow]), slow) == 1.0


def test_a_nodes_speed_is_measured_once_then_read_from_the_cache(tmp_path):
    """The first actor of a node measures; later ones (and later runs) read CACHE/calibration; another
    key (threads, device) measures again; an unreadable record is measured again and replaced."""
    calls = []

    def measure(value):
        return lambda: calls.append(value) or value

    assert C.cached_speed(tmp_path, "cpu", "cpu", 1, measure(7.5)) == (7.5, False)
    assert C.cached_speed(tmp_path, "cpu", "cpu", 1, measure(99.0)) == (7.5, True)
    assert C.cached_speed(tmp_path, "cpu", "cpu", 2, measure(4.0)) == (4.0, False)
    [record] = (tmp_path / C.CALIBRATION_FOLDER).glob(f"*{C.calibration_key('cpu', 'cpu', 1)[-16:]}.json")
    record.write_text("{not json")
    assert C.cached_speed(tmp_path, "cpu", "cpu", 1, measure(8.0)) == (8.0, False)
    assert calls == [7.5, 4.0, 8.0]
    assert C.calibration_key("cpu", "cpu", 1) != C.calibration_key("cuda", "NVIDIA H200", 1)
    assert not list((tmp_path / C.CALIBRATION_FOLDER).glob("*.part"))
