"""The per-GPU (or per-CPU-slot) worker: calibrates its device once, then runs trials one after another.

TrialWorker is a plain class; `remote_worker_class()` wraps it as a threaded Ray actor (a thin shell)."""
from __future__ import annotations

import os
import socket
import threading
import time

from trainer import runner
from trainer.spec import TrialResult, TrialSpec

LAUNCH_LEAD_SECONDS = 5.0       # the next trial is ready this long before the current one stops training
FIRST_STARTUP_GUESS = 60.0      # before a start-up was measured here (compile of a fresh model)
POLL_SECONDS = 0.2
OOM_MARKS = ("OutOfMemoryError", "out of memory")


class TrialWorker:
    """Runs trials on one device; with overlap, trial k+1 starts up while trial k is judged."""

    def __init__(self, slot: str, device: str, data_config: dict | None = None, threads: int = 1):
        self.slot = slot
        self.device = device
        self.threads = threads
        self.data_config = data_config
        self.gpu_index = os.environ.get("CUDA_VISIBLE_DEVICES") if device == "cuda" else None
        self._device = threading.Semaphore(1)     # one trial trains on the device at a time
        self._live: dict = {}                      # trial id -> latest live state
        self._speed: float | None = None
        self._speed_cached = False                 # the speed came from this node's calibration cache
        self._training_until: float | None = None  # when the trial that trains now should stop
        self._startups: list[float] = []           # launch-to-ready seconds of earlier trials here
        self._pending: set[str] = set()            # launched here, not yet training
        self._busy: set[str] = set()               # launched here and not yet judged
        self._launch_lock = threading.Lock()

    def info(self) -> dict:
        """Node, device name and speed: measured once per node and device (trainer/calibrate.py's cache)."""
        name = runner.gpu_name(self.device, self.gpu_index)
        if self._speed is None:
            from judge.spec import DataConfig
            from trainer.calibrate import cached_speed, measure_speed_isolated
            cache = DataConfig(**(self.data_config or {})).cache_root()
            self._speed, self._speed_cached = cached_speed(
                cache, self.device, name, self.threads, lambda: measure_speed_isolated(self.device, threads=self.threads))
        return {"slot": self.slot, "node": socket.gethostname(), "device": self.device, "device_name": name,
                "gpu_index": self.gpu_index, "speed": self._speed, "speed_cached": self._speed_cached,
                "pid": os.getpid()}

    def ensure_data(self) -> str:
        """Prepare (or find) the data on this node; returns the data dir."""
        from judge.prepare import prepare
        from judge.spec import DataConfig
        spec = prepare(DataConfig(**(self.data_config or {})), log=lambda *a, **k: None)
        return spec.data_dir

    def live(self) -> dict:
        return {k: {name: value for name, value in dict(v).items() if not callable(value)}
                for k, v in list(self._live.items())}

    def run(self, spec_dict: dict, meta: dict | None = None) -> dict:
        """Run one trial; returns TrialResult as a dict (never raises for the candidate's faults)."""
        spec = TrialSpec(**spec_dict)
        if self.device == "cuda":
            spec.gpu_index = self.gpu_index
        state = {"trial_id": spec.trial_id, "phase": "starting", "budget": spec.budget_seconds,
                 "progress": 0.0, "loss": None, **(meta or {})}
        self._live[spec.trial_id] = state

        def on_event(event: dict) -> None:
            if event.get("event") == "ready":
                state.update(phase="ready", t_ready=time.time())
            elif event.get("event") == "start" and "t_start" not in state:
                state.update(phase="training", t_start=time.time())
                self._pending.discard(spec.trial_id)
                self._training_until = time.time() + spec.budget_seconds
            elif event.get("event") == "progress":
                state.update(progress=event.get("progress", 0.0), loss=event.get("loss"))
            elif event.get("event") == "finish" and state.get("phase") == "training":
                state.update(phase="judging")
                release = state.get("release")
                if release:
                    release()          # training is over: the next trial may take the device now

        try:
            return self._run(spec, on_event, state).to_dict()
        except Exception as exc:  # the runner itself failed: an infrastructure fault, not the candidate's
            return TrialResult(trial_id=spec.trial_id, status="infra", reason=f"runner error: {exc!r}").to_dict()
        finally:
            self._pending.discard(spec.trial_id)
            self._busy.discard(spec.trial_id)
            self._live.pop(spec.trial_id, None)

    def _run(self, spec: TrialSpec, on_event, state: dict) -> TrialResult:
        """Without overlap a trial holds the device from launch to verdict. With overlap the next trial
        starts up while this one still trains and takes the device at this one's finish event; this
        one's judge then runs beside the next one's training."""
        if not spec.wait_for_go:
            with self._device:
                partial = self._launch(spec, on_event, state).supervise()
                return self._judge(partial, spec, state)
        self._wait_for_launch_slot(state)
        running = self._launch(spec, on_event, state)
        if self._acquire_unless_dead(running):
            release = self._take_device(state)
            try:
                running.go()
                partial = running.supervise()
            finally:
                release()
        else:                      # died while starting up: collect it without taking the device
            partial = running.supervise()
        stamps = partial.result.timeline       # the runner's stamps: the actor sees "ready" only at go
        if "ready" in stamps:
            self._startups.append(stamps["ready"] - stamps["launch"])
        if out_of_memory_at_startup(partial.result):    # still pending: nothing else launches meanwhile
            partial = self._rerun_alone(spec, on_event, state, partial)
        self._pending.discard(spec.trial_id)
        return self._judge(partial, spec, state)

    def _launch(self, spec: TrialSpec, on_event, state: dict):
        state.update(phase="starting", t_launch=time.time())
        state.pop("t_ready", None)
        state.pop("t_start", None)
        self._pending.add(spec.trial_id)
        self._busy.add(spec.trial_id)
        return runner.launch(spec, on_event=on_event)

    def _judge(self, partial, spec: TrialSpec, state: dict) -> TrialResult:
        state["phase"] = "judging"
        return runner.judge_trial(partial, spec)

    def _take_device(self, state: dict):
        """The device is held (acquired by the caller): returns the one-shot release, also kept in state."""
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._training_until = None
                self._device.release()

        state["release"] = release
        return release

    def _acquire_unless_dead(self, running) -> bool:
        """Wait for the device; False (device not taken) if the trial's process ends first."""
        while not self._device.acquire(timeout=POLL_SECONDS):
            if running.proc.poll() is not None:
                return False
        return True

    def _rerun_alone(self, spec: TrialSpec, on_event, state: dict, first):
        """Out of memory while starting up beside other trials is not the candidate's fault: run it once
        more with the device to itself (no trial training, starting up or being judged here)."""
        self._device.acquire()
        release = self._take_device(state)
        try:
            while self._busy - {spec.trial_id}:
                time.sleep(POLL_SECONDS)
            running = self._launch(spec, on_event, state)
            running.go()
            partial = running.supervise()
        finally:
            release()
            self._pending.discard(spec.trial_id)
        partial.result.timeline["first_attempt"] = {k: v for k, v in first.result.timeline.items()
                                                    if isinstance(v, float)}
        partial.result.timeline["retried_alone"] = "out of memory while starting up beside other trials"
        return partial

    def _wait_for_launch_slot(self, state: dict) -> None:
        """Block until no other trial is starting up here and the one that trains now is within one
        start-up time of its end (or the device is free)."""
        state["phase"] = "queued"
        while True:
            with self._launch_lock:                      # check and claim the start-up place at once
                if not self._pending and self._launch_due():
                    self._pending.add(state["trial_id"])
                    return
            time.sleep(POLL_SECONDS)

    def _launch_due(self) -> bool:
        free = self._device.acquire(blocking=False)
        if free:
            self._device.release()
            return True
        until = self._training_until
        lead = LAUNCH_LEAD_SECONDS + (max(self._startups[-5:]) if self._startups else FIRST_STARTUP_GUESS)
        return until is not None and time.time() >= until - lead


def out_of_memory_at_startup(result: TrialResult) -> bool:
    """A crash before training started whose log says the device ran out of memory."""
    return (result.status == "crash" and "start" not in result.timeline
            and any(mark in result.log_tail for mark in OOM_MARKS))


def remote_worker_class(ray, num_gpus: float, num_cpus: float):
    """TrialWorker as a Ray actor class: restarted by Ray when it dies, several calls at once."""
    return ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=-1, max_task_retries=0,
                      max_concurrency=4)(TrialWorker)
